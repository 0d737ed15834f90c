"""Parts of the HTML run report: run-directory reading, SVG charts, media handling, CSS, JS.

`soundry.eval.report` assembles them into one page.
"""
