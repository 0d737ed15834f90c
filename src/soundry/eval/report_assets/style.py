"""The report's stylesheet, inlined into the page (system fonts only; light and dark)."""

CSS = """
:root {
  --bg: #fbfbfa; --fg: #1d1f21; --muted: #5b6168; --card: #ffffff; --line: #dfe2e6;
  --accent: #0a5fa8; --good: #e3f4ea; --good-fg: #0b5b2a; --diff: #fff4d6; --plot: #ffffff;
  --grid: #eceef1; --code: #f3f4f6;
  color-scheme: light dark;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #16181b; --fg: #e7e9ec; --muted: #a3a9b1; --card: #1e2125; --line: #343a41;
    --accent: #7cb8f2; --good: #17382a; --good-fg: #a6e3bd; --diff: #3a3218; --plot: #1b1e22;
    --grid: #2b3036; --code: #24282d;
  }
}
* { box-sizing: border-box; }
html { font-size: 16px; }
body {
  margin: 0; background: var(--bg); color: var(--fg);

  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  line-height: 1.5;
}
a { color: var(--accent); }
a:focus-visible, button:focus-visible, summary:focus-visible, audio:focus-visible {
  outline: 3px solid var(--accent); outline-offset: 2px;
}
.skip {
  position: absolute; left: -999px; top: 0; background: var(--card); padding: .5rem 1rem;
}
.skip:focus { left: 1rem; z-index: 10; }
header.page {
  padding: 1.6rem clamp(1rem, 4vw, 3rem) 1rem; border-bottom: 1px solid var(--line);
  background: var(--card);
}
header.page h1 {
  margin: 0 0 .3rem; font-size: 1.6rem; font-weight: 650; letter-spacing: -.01em;
}
header.page p { margin: 0; color: var(--muted); }
nav.toc { margin-top: .8rem; }
nav.toc ul {
  display: flex; flex-wrap: wrap; gap: .4rem 1.2rem; list-style: none; margin: 0; padding: 0;
}
main { padding: 0 clamp(1rem, 4vw, 3rem) 3rem; max-width: 1500px; }
section { margin-top: 2.2rem; }
h2 {
  font-size: 1.3rem; margin: 0 0 .8rem; padding-bottom: .3rem;
  border-bottom: 2px solid var(--line);
}
h3 { font-size: 1.05rem; margin: 1.4rem 0 .6rem; }
h4 { font-size: .95rem; margin: 0 0 .4rem; }
p.note { color: var(--muted); margin: .2rem 0 .8rem; font-size: .92rem; }
.runs {
  display: flex; flex-wrap: wrap; gap: .5rem; list-style: none; padding: 0; margin: .6rem 0 0;
}
.runs li {
  background: var(--code); border-radius: 999px; padding: .15rem .75rem; font-size: .9rem;
}
.runs .swatch { width: 22px; height: 10px; margin-right: .35rem; vertical-align: middle; }
.cards {
  display: grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr)); gap: .8rem;
}
.card {
  background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: .8rem 1rem;
}
.card .k { color: var(--muted); font-size: .82rem; }
.card .v { font-size: 1.2rem; font-weight: 600; font-variant-numeric: tabular-nums; }
.grid {
  display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 440px), 1fr));
  gap: 1rem;
}
figure { margin: 0; }
figure.chart-box {
  background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: .7rem .8rem .5rem; position: relative;
}
figure.chart-box figcaption { font-weight: 600; font-size: .95rem; margin-bottom: .2rem; }
svg.chart { width: 100%; height: auto; display: block; font-size: 11px; }
svg.chart .plot-bg { fill: var(--plot); }
svg.chart .gridline { stroke: var(--grid); stroke-width: 1; }
svg.chart .tick { fill: var(--muted); }
svg.chart .axis-label { fill: var(--muted); font-size: 11px; }
svg.chart .empty { fill: var(--muted); }
svg.chart polyline {
  fill: none; stroke-width: 1.8; stroke-linejoin: round; stroke-linecap: round;
}
svg.chart polyline.raw { stroke-width: 1; opacity: .25; }
svg.chart .cursor { stroke: var(--muted); stroke-width: 1; stroke-dasharray: 3 3; }
.tooltip {
  position: absolute; pointer-events: none; background: var(--card);
  border: 1px solid var(--line);
  border-radius: 6px; padding: .3rem .5rem; font-size: .8rem;
  box-shadow: 0 2px 8px rgba(0,0,0,.15);
  white-space: nowrap; z-index: 5; font-variant-numeric: tabular-nums;
}
ul.legend {
  display: flex; flex-wrap: wrap; gap: .2rem .9rem; list-style: none; padding: 0;
  margin: .3rem 0 0; font-size: .85rem;
}
ul.legend .swatch { width: 22px; height: 10px; margin-right: .3rem; vertical-align: middle; }
.table-wrap {
  overflow-x: auto; border: 1px solid var(--line); border-radius: 10px;
  background: var(--card);
}
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
table.valid-metrics, table.side-by-side { width: auto; min-width: min(100%, 22rem); }
caption { text-align: left; font-weight: 600; padding: .6rem .8rem .2rem; }
th, td {
  padding: .35rem .8rem; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top;
}
thead th { background: var(--code); font-weight: 600; position: sticky; top: 0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { background: var(--good); color: var(--good-fg); font-weight: 600; }
td small.ci { display: block; font-weight: 400; opacity: .75; white-space: nowrap; }
tr.baseline th, tr.baseline td { font-style: italic; border-top: 2px solid var(--line, #999); }
tr.diff td { background: var(--diff); }
td code, th code, .kv code {
  font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .85rem;
}
pre {
  background: var(--code); padding: .8rem 1rem; border-radius: 8px; overflow: auto;
  max-height: 32rem;
  font-size: .82rem; line-height: 1.4;
}
details { margin: .6rem 0; }
summary { cursor: pointer; font-weight: 600; }
.clip {
  background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: .9rem 1rem; margin-bottom: 1rem;
}
.clip-row {
  display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 280px), 1fr));
  gap: .9rem;
}
.player { display: flex; flex-direction: column; gap: .35rem; }
.player .label { font-size: .88rem; font-weight: 600; }
.player .label small { font-weight: 400; color: var(--muted); }
.player audio { width: 100%; }
.player img {
  width: 100%; height: auto; border-radius: 6px; border: 1px solid var(--line);
  background: #000;
}
.empty-note { color: var(--muted); font-style: italic; }
li.finding { margin: .4rem 0 .9rem; padding-left: .6rem; border-left: 4px solid #c98a00; }
li.finding.error { border-left-color: #c62828; }
li.finding .chart-box, li.finding .player { max-width: 40rem; margin-top: .4rem; }
footer {
  color: var(--muted); font-size: .85rem; padding: 2rem clamp(1rem, 4vw, 3rem);
  border-top: 1px solid var(--line); margin-top: 3rem;
}
@media print { .tooltip, nav.toc { display: none; } }
"""
