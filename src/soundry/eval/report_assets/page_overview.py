"""The report's health, overview, config and provenance sections (a mixin of the page)."""

from __future__ import annotations

import math
from html import escape
from typing import Any

from soundry.config import flatten
from soundry.eval.fmt import NA
from soundry.eval.report_assets.charts import (
    Series,
    color_for,
    dash_for,
)
from soundry.eval.report_assets.keys import (
    _MISSING,
    _duration,
    _last_value,
    _num,
    _valid_name,
    _value_text,
    group_keys,
    is_primary,
)
from soundry.eval.report_assets.runs import Run


class OverviewSections:
    """The report's health, overview, config and provenance sections (a mixin of the page)."""

    def _health(self) -> str:
        """Each run's training-health findings (health.jsonl), errors first, with the curve
        or the validation clip that shows each."""
        parts = []
        for run in self.runs:
            label = f"{run.label}: " if self.multi else ""
            if not run.health:
                parts.append(f'<p class="note">{escape(label)}no monitor found a problem '
                             "(soundry doctor re-checks a run offline).</p>")
                continue
            errors = sum(f.get("severity") == "error" for f in run.health)
            items = []
            for f in run.health:
                sev = str(f.get("severity", "warning"))
                since = f.get("since")
                when = f"step {f.get('step')}" + (f", since step {since}" if since is not None
                                                  else "")
                shown = self._health_evidence(run, f)
                items.append(
                    f'<li class="finding {escape(sev)}"><strong>{escape(sev.upper())}</strong> '
                    f"<code>{escape(str(f.get('monitor')))}</code> ({escape(when)}): "
                    f"{escape(str(f.get('message', '')))}{shown}</li>")
            parts.append(
                f'<div role="alert"><h3>{escape(label)}{errors} error(s), '
                f"{len(run.health) - errors} warning(s)</h3><ul>{''.join(items)}</ul></div>")
        return "".join(parts)

    def _health_evidence(self, run: Run, finding: dict[str, Any]) -> str:
        key, _, aspect = str(finding.get("key", "")).partition(":")
        candidates = {  # the logged curve that shows each kind of finding
            "grad_spike": [f"clip_fraction/{key}" if aspect else f"grad_norm_max/{key}",
                           f"grad_norm/{key}"],
            "discriminator_dominance": ["loss/d"],
            "eos_untrained": ["eos/prob", "eos/targets"],
            "valid_vs_generation": ["loss/lm"],
        }.get(str(finding.get("monitor")), [key])
        for name in candidates:
            if name in run.train:
                c = run.train[name]
                return self._chart(name, [Series(run.label, c.steps, c.values,
                                                 color=color_for(0), smooth=False)])
        clips = (finding.get("evidence") or {}).get("clips")
        if isinstance(clips, dict):
            step = finding.get("step")
            vstep = next((v for v in run.valid_steps if v.step == step), None)
            if vstep is not None:
                name = next(iter(clips))
                return self._player(vstep.items.get(name), name, f"step {step}")
        return ""

    def _runs_legend(self) -> str:
        items = []
        for i, run in enumerate(self.runs):
            swatch = ""
            if self.multi:
                dash = f' stroke-dasharray="{dash_for(i)}"' if dash_for(i) else ""
                swatch = (
                    '<svg class="swatch" viewBox="0 0 22 10" aria-hidden="true">'
                    f'<line x1="0" x2="22" y1="5" y2="5" stroke="{color_for(i)}" '
                    f'stroke-width="3"{dash}/></svg>'
                )
            items.append(
                f'<li title="{escape(str(run.path), quote=True)}">{swatch}'
                f"<strong>{escape(run.label)}</strong></li>"
            )
        return f'<ul class="runs" aria-label="Runs">{"".join(items)}</ul>'

    # ---------------------------------------------------------------- overview
    def _headline_keys(self, run: Run | None = None, limit: int = 6) -> list[str]:
        runs = [run] if run else self.runs
        keys: list[str] = []
        for r in runs:
            keys.extend(k for k in r.valid if k not in keys)
        primary = [k for k in keys if is_primary(_valid_name(k))]
        ordered = [k for members in group_keys(primary, "valid/").values() for k in members]
        return ordered[:limit]

    @staticmethod
    def _facts(run: Run) -> list[tuple[str, str]]:
        facts = []
        if run.status:
            facts.append(("status", run.status.replace("_", " ")))
        facts.append(
            ("last training step", _num(run.last_step) if run.last_step is not None else "—")
        )
        facts.append(("validations", str(len({s for c in run.valid.values() for s in c.steps}))))
        facts.append(("wall time", _duration(run.wall_seconds)))
        rate = (run.summary or {}).get("steps_per_second")
        if isinstance(rate, int | float):
            facts.append(("steps per second", _num(float(rate))))
        skips = run.train.get("nonfinite_skips")
        if skips is not None:
            finite = [v for v in skips.values if math.isfinite(v)]
            facts.append(("non-finite steps skipped", _num(max(finite, default=0.0))))
        return facts

    def _overview_single(self) -> str:
        run = self.runs[0]
        cards = self._facts(run)
        best = self._best_checkpoint(run)
        if best:
            cards.append(("best checkpoint", best))
        for key in self._headline_keys(run, limit=8):
            cards.append((f"{_valid_name(key)} (last)", _num(_last_value(run.valid[key]))))
        html = (
            '<div class="cards">'
            + "".join(
                f'<div class="card"><div class="k">{escape(k)}</div>'
                f'<div class="v">{escape(v)}</div></div>'
                for k, v in cards
            )
            + "</div>"
        )
        return html + self._problems([run])

    def _overview_multi(self) -> str:
        valid_keys = self._headline_keys()
        fact_names: list[str] = []
        facts = [dict(self._facts(r)) for r in self.runs]
        for f in facts:
            fact_names.extend(k for k in f if k not in fact_names)
        head = "".join(f'<th scope="col">{escape(h)}</th>' for h in fact_names)
        head += '<th scope="col">best checkpoint</th>'
        head += "".join(
            f'<th scope="col" class="num">{escape(_valid_name(k))} (last)</th>' for k in valid_keys
        )
        rows = []
        for run, f in zip(self.runs, facts, strict=True):
            row = f'<th scope="row">{escape(run.label)}</th>'
            row += "".join(f"<td>{escape(f.get(name, '—'))}</td>" for name in fact_names)
            row += f"<td>{escape(self._best_checkpoint(run) or '—')}</td>"
            for k in valid_keys:
                c = run.valid.get(k)
                row += f'<td class="num">{escape(_num(_last_value(c)) if c else "—")}</td>'
            rows.append(f"<tr>{row}</tr>")
        table = (
            '<div class="table-wrap"><table class="overview"><caption>Runs at a glance</caption>'
            f'<thead><tr><th scope="col">run</th>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>"
        )
        return table + self._problems(self.runs)

    @staticmethod
    def _best_checkpoint(run: Run) -> str | None:
        idx = run.checkpoints or {}
        best = idx.get("best")
        if not best:
            return None
        metric, value = idx.get("best_metric"), idx.get("best_value")
        text = str(best)
        if metric:
            shown = _num(float(value)) if isinstance(value, int | float) else NA
            text += f" ({_valid_name(str(metric))} {shown})"
        return text

    @staticmethod
    def _problems(runs: list[Run]) -> str:
        items = [f"{r.label}: {p}" for r in runs for p in r.problems]
        if not items:
            return ""
        lis = "".join(f"<li>{escape(i)}</li>" for i in items)
        return f'<div role="note"><h3>Notes</h3><ul>{lis}</ul></div>'

    # ---------------------------------------------------------------- config
    def _config_single(self) -> str:
        run = self.runs[0]
        parts = []
        if run.provenance:
            flat = flatten(run.provenance)
            main = {k: v for k, v in flat.items() if not k.startswith("packages.")}
            packages = {
                k.removeprefix("packages."): v for k, v in flat.items() if k.startswith("packages.")
            }
            parts.append(self._kv_table("Provenance", main))
            if packages:
                parts.append(
                    f"<details><summary>Package versions ({len(packages)})</summary>"
                    f"{self._kv_table('Package versions', packages)}</details>"
                )
        else:
            parts.append('<p class="empty-note">No provenance.json in this run.</p>')
        if run.config_text:
            parts.append(
                "<details open><summary>Resolved config (config.yaml)</summary>"
                f"<pre><code>{escape(run.config_text)}</code></pre></details>"
            )
        else:
            parts.append('<p class="empty-note">No config.yaml in this run.</p>')
        return "".join(parts)

    def _kv_table(self, caption: str, values: dict[str, Any]) -> str:
        rows = "".join(
            f'<tr><th scope="row"><code>{escape(k)}</code></th>'
            f"<td><code>{escape(self._prov_text(v))}</code></td></tr>"
            for k, v in values.items()
        )
        return (
            f'<div class="table-wrap"><table class="kv"><caption>{escape(caption)}</caption>'
            f"<tbody>{rows}</tbody></table></div>"
        )

    @staticmethod
    def _prov_text(v: Any) -> str:
        if v is _MISSING:
            return "—"
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            return " ".join(v)  # a command line
        return _value_text(v)

    def config_diff(self) -> list[tuple[str, list[Any]]]:
        """(dotted key, value per run) for every key whose values differ between runs."""
        flat = [flatten(r.config) for r in self.runs]
        keys: list[str] = []
        for f in flat:
            keys.extend(k for k in f if k not in keys)
        diff = []
        for key in keys:
            values = [f.get(key, _MISSING) for f in flat]
            if any(v is _MISSING for v in values) or any(v != values[0] for v in values[1:]):
                diff.append((key, values))
        return diff

    def _config_multi(self) -> str:
        heads = "".join(f'<th scope="col">{escape(r.label)}</th>' for r in self.runs)
        diff = self.config_diff()
        if diff:
            rows = "".join(
                f'<tr class="diff"><th scope="row"><code>{escape(key)}</code></th>'
                + "".join(f"<td><code>{escape(_value_text(v))}</code></td>" for v in values)
                + "</tr>"
                for key, values in diff
            )
            n_same = len({k for r in self.runs for k in flatten(r.config)}) - len(diff)
            table = (
                '<div class="table-wrap"><table class="config-diff">'
                f"<caption>{len(diff)} key(s) differ; {n_same} are the same in every run "
                "(— means not set)</caption>"
                f'<thead><tr><th scope="col">key</th>{heads}</tr></thead>'
                f"<tbody>{rows}</tbody></table></div>"
            )
        else:
            table = '<p class="config-same">The configs are identical.</p>'
        prov = self._provenance_multi(heads)
        full = "".join(
            f"<details><summary>Full config of {escape(r.label)}</summary>"
            f"<pre><code>{escape(r.config_text or '(no config.yaml)')}</code></pre></details>"
            for r in self.runs
        )
        return table + prov + full

    def _provenance_multi(self, heads: str) -> str:
        flat = [flatten(r.provenance) for r in self.runs]
        keys: list[str] = []
        for f in flat:
            keys.extend(k for k in f if k not in keys)
        if not keys:
            return ""
        rows = []
        n_diff = 0
        for key in keys:
            values = [f.get(key, _MISSING) for f in flat]
            differs = any(v != values[0] for v in values[1:])
            n_diff += differs
            cls = ' class="diff"' if differs else ""
            rows.append(
                f'<tr{cls}><th scope="row"><code>{escape(key)}</code></th>'
                + "".join(f"<td><code>{escape(self._prov_text(v))}</code></td>" for v in values)
                + "</tr>"
            )
        return (
            f"<details><summary>Provenance ({n_diff} differing entries highlighted)</summary>"
            '<div class="table-wrap"><table class="provenance"><caption>Provenance</caption>'
            f'<thead><tr><th scope="col">key</th>{heads}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div></details>"
        )

    # ---------------------------------------------------------------- curves
