"""The report's curves: validation metrics, losses, grad norms and learning rates (a mixin
of the page)."""

from __future__ import annotations

from html import escape

from soundry.eval.directions import (
    better_text,
)
from soundry.eval.report_assets.charts import (
    LineChart,
    Series,
    color_for,
    dash_for,
    legend_html,
)
from soundry.eval.report_assets.keys import (
    _valid_name,
    _variant_label,
    group_keys,
    is_discriminator_key,
    is_primary,
    metric_group,
)


class CurveSections:
    """The report's curves (a mixin of the page)."""

    def _chart(
        self, title: str, series: list[Series], y_label: str = "", log_y: bool | None = None,
        x_label: str = "step",
    ) -> str:
        self._chart_ids += 1
        chart = LineChart(
            title, series, y_label=y_label, log_y=log_y, chart_id=f"chart{self._chart_ids}",
            x_label=x_label, x_integer=x_label == "step",
        )
        legend = legend_html(chart.series) if len(chart.series) > 1 or self.multi else ""
        return (
            f'<figure class="chart-box"><figcaption>{escape(title)}</figcaption>'
            f"{chart.svg()}{legend}</figure>"
        )

    @staticmethod
    def _group(html: list[str], title: str, note: str = "") -> str:
        if not html:
            return ""
        note_html = f'<p class="note">{escape(note)}</p>' if note else ""
        return f'<h3>{escape(title)}</h3>{note_html}<div class="charts grid">{"".join(html)}</div>'

    def _keys(self, which: str) -> list[str]:
        keys: list[str] = []
        for r in self.runs:
            keys.extend(k for k in sorted(getattr(r, which)) if k not in keys)
        return keys

    def _train_groups(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {
            "gen": [],
            "disc": [],
            "grad": [],
            "lr": [],
            "perf": [],
            "other": [],
        }
        for key in self._keys("train"):
            if key.startswith("grad_norm"):
                groups["grad"].append(key)
            elif key.startswith("lr/"):
                groups["lr"].append(key)
            elif key.startswith("perf/"):
                groups["perf"].append(key)
            elif key.startswith("loss/"):
                groups["disc" if is_discriminator_key(key) else "gen"].append(key)
            elif not key.startswith("nonfinite_skips"):
                groups["other"].append(key)
        return groups

    def _compute_curves(self) -> str:
        """Validation metrics against training time (`valid/train_minutes`, logged by runs
        with a time budget or time points), one line per run, and the classical codecs
        scored on the same clips (RUN/valid/baselines.json) as horizontal dashed lines."""
        timed = [r for r in self.runs if "valid/train_minutes" in r.valid]
        if not timed:
            return ""
        baselines: dict[str, dict[str, float]] = {}
        for r in timed:
            for name, values in r.baselines.items():
                baselines.setdefault(name, values)
        keys = []
        for members in group_keys(self._keys("valid"), "valid/").values():
            key = next((k for k in members if is_primary(_valid_name(k))), None)
            if key is not None and key != "valid/train_minutes" and better_text(key):
                keys.append(key)
        # the metrics the baselines were scored on, else the first headline metrics
        scored = {m for values in baselines.values() for m in values}
        keys = [k for k in keys if _valid_name(k) in scored] if scored else keys[:4]
        charts = []
        for key in keys:
            series = []
            x_hi = 0.0
            for i, r in enumerate(timed):
                c, t = r.valid.get(key), r.valid["valid/train_minutes"]
                if c is None:
                    continue
                minutes = dict(zip(t.steps, t.values, strict=True))
                pts = [(minutes[s], v) for s, v in zip(c.steps, c.values, strict=True)
                       if s in minutes]
                if not pts:
                    continue
                x_hi = max(x_hi, max(p[0] for p in pts))
                series.append(Series(r.label, [p[0] for p in pts], [p[1] for p in pts],
                                     color=color_for(i), dash=dash_for(i), style="both"))
            if not series:
                continue
            name = _valid_name(key)
            for j, (bname, values) in enumerate(sorted(baselines.items())):
                if name in values:
                    series.append(Series(bname, [0.0, x_hi], [values[name]] * 2,
                                         color="#888888", dash=("6 4", "2 3", "8 3 2 3")[j % 3]))
            charts.append(self._chart(f"{name}{better_text(key)}", series,
                                      x_label="training minutes"))
        note = ("Validation against training time (validations and checkpoints excluded, "
                "summed across resumes); dashed grey lines: classical codecs on the same "
                "validation clips." if baselines else
                "Validation against training time (validations and checkpoints excluded, "
                "summed across resumes).")
        return self._group(charts, "Quality against training time", note)

    def _curves(self) -> str:
        out = [self._valid_curves(), self._compute_curves()]
        groups = self._train_groups()
        balance = self._balance_chart(groups["gen"], groups["disc"])
        out.append(self._group(balance + self._train_charts(groups["gen"]), "Generator losses"))
        out.append(self._group(self._train_charts(groups["disc"]), "Discriminator losses"))
        for gkey, title, note in (
            ("grad", "Gradient norms", "Before clipping, per optimizer."),
            ("lr", "Learning rates", ""),
            ("perf", "Throughput", ""),
        ):
            keys = groups[gkey]
            if not keys:
                continue
            if self.multi:
                out.append(self._group([self._chart(k, self._per_run(k)) for k in keys], title))
            else:
                run = self.runs[0]
                series = [
                    Series(
                        k,
                        run.train[k].steps,
                        run.train[k].values,
                        color=color_for(i),
                        dash=dash_for(i),
                        smooth=gkey == "grad",
                    )
                    for i, k in enumerate(keys)
                ]
                out.append(self._group([self._chart(title, series)], title, note))
        out.append(self._group(self._train_charts(groups["other"]), "Other training values"))
        html = "".join(out)
        return html or (
            '<p class="empty-note">No metrics were logged (metrics.jsonl missing or empty).</p>'
        )

    def _valid_curves(self) -> str:
        charts = []
        for group, members in group_keys(self._keys("valid"), "valid/").items():
            title = f"{group}{better_text(group)}"
            if self.multi:
                primary = [k for k in members if is_primary(_valid_name(k))]
                for key in primary or members:
                    name = _valid_name(key)
                    label = title if key == members[0] and primary else name
                    charts.append(self._chart(label, self._per_run(key, valid=True)))
                continue
            run = self.runs[0]
            has_levels = any("levels" in metric_group(_valid_name(k))[1] for k in members)
            series = []
            for i, key in enumerate(members):
                name = _valid_name(key)
                c = run.valid[key]
                label = _variant_label(group, metric_group(name)[1], has_levels)
                if len(members) == 1:
                    label = f"valid {name}"
                series.append(
                    Series(
                        label, c.steps, c.values, color=color_for(i), dash=dash_for(i), style="both"
                    )
                )
            train_key = self._matching_train_key(group)
            if train_key:
                c = run.train[train_key]
                series.append(
                    Series(
                        f"train {train_key}",
                        c.steps,
                        c.values,
                        color=color_for(len(members)),
                        smooth=True,
                    )
                )
            charts.append(self._chart(title, series))
        note = (
            "One colour and dash pattern per run; per-level variants are charted one by one."
            if self.multi
            else "Variants with fewer codebook levels and per-level values share a chart."
        )
        return self._group(charts, "Validation metrics", note)

    def _matching_train_key(self, group: str) -> str | None:
        """The training loss with the same name as a validation metric, if any."""
        run = self.runs[0]
        for cand in (group, f"loss/{group}", group.removeprefix("loss/")):
            if cand in run.train:
                return cand
        return None

    def _train_charts(self, keys: list[str]) -> list[str]:
        charts = []
        for group, members in group_keys(keys).items():
            if self.multi:
                charts.extend(self._chart(k, self._per_run(k)) for k in members)
                continue
            run = self.runs[0]
            if len(members) == 1:
                c = run.train[members[0]]
                charts.append(
                    self._chart(members[0], [Series(members[0], c.steps, c.values, smooth=True)])
                )
                continue
            series = [
                Series(
                    _variant_label(group, metric_group(k)[1], False),
                    run.train[k].steps,
                    run.train[k].values,
                    color=color_for(i),
                    dash=dash_for(i),
                    smooth=True,
                )
                for i, k in enumerate(members)
            ]
            charts.append(self._chart(f"{group} per level", series))
        return charts

    def _balance_chart(self, gen: list[str], disc: list[str]) -> list[str]:
        """Generator adversarial loss against the discriminator's, on one chart (one run)."""
        if self.multi or not disc:
            return []
        adv = [k for k in gen if any(t in k.lower() for t in ("adv", "gan"))]
        if not adv:
            adv = [k for k in gen if k.lower() in ("loss/g", "loss/gen", "loss/generator")]
        if not adv:
            return []
        run = self.runs[0]
        series = [
            Series(
                k,
                run.train[k].steps,
                run.train[k].values,
                color=color_for(i),
                dash=dash_for(i),
                smooth=True,
            )
            for i, k in enumerate(adv + disc)
        ]
        return [self._chart("Generator vs discriminator", series)]

    def _per_run(self, key: str, valid: bool = False) -> list[Series]:
        out = []
        for i, run in enumerate(self.runs):
            c = (run.valid if valid else run.train).get(key)
            if c is None:
                continue
            out.append(
                Series(
                    run.label,
                    c.steps,
                    c.values,
                    color=color_for(i),
                    dash=dash_for(i),
                    style="both" if valid else "line",
                    smooth=not valid,
                )
            )
        return out

    # ---------------------------------------------------------------- metric tables
    def _ordered_valid_keys(self) -> tuple[list[str], list[str]]:
        """(headline keys, all other keys) of the runs' validation metrics, in display order."""
        ordered = [
            k for members in group_keys(self._keys("valid"), "valid/").values() for k in members
        ]
        primary = [k for k in ordered if is_primary(_valid_name(k))]
        return primary, [k for k in ordered if k not in primary]
