"""The report's metric tables and listening sections (a mixin of the page)."""

from __future__ import annotations

import hashlib
import math
from html import escape

import soundfile as sf

from soundry.eval.directions import (
    arrow,
    best_value,
    better_text,
)
from soundry.eval.report_assets.keys import (
    _VALID_SCOPE,
    _num,
    _png_size,
    _valid_name,
    pick_evenly,
)
from soundry.eval.report_assets.runs import Media, Run, ValidStep


class TableSections:
    """The report's metric tables and listening sections (a mixin of the page)."""

    def _metrics_single(self) -> str:
        run = self.runs[0]
        primary, rest = self._ordered_valid_keys()
        if not primary and not rest:
            return '<p class="empty-note">No validation metrics were logged.</p>'
        html = self._steps_table(
            run,
            primary or rest,
            "valid-metrics",
            "Validation metrics (↓ lower is better, ↑ higher is better; "
            "best value of each column highlighted). " + _VALID_SCOPE,
        )
        if primary and rest:
            html += (
                f"<details><summary>All {len(primary) + len(rest)} validation values "
                "(fewer levels, per level)</summary>"
                + self._steps_table(
                    run, primary + rest, "valid-metrics-all", "Every validation value by step"
                )
                + "</details>"
            )
        return html

    @staticmethod
    def _steps_table(run: Run, keys: list[str], cls: str, caption: str) -> str:
        table: dict[int, dict[str, float]] = {}
        best = {}
        for key in keys:
            c = run.valid[key]
            for s, v in zip(c.steps, c.values, strict=True):
                table.setdefault(s, {})[key] = v
            vals = [v for v in c.values if math.isfinite(v)]
            if vals:
                best[key] = best_value(key, vals)
        head = "".join(
            f'<th scope="col" class="num">{escape(_valid_name(k))}'
            f' <span aria-hidden="true">{arrow(k)}</span></th>'
            for k in keys
        )
        rows = []
        for step in sorted(table):
            cells = []
            for k in keys:
                v = table[step].get(k)
                is_best = v is not None and math.isfinite(v) and v == best.get(k)
                kind = "num best" if is_best else "num"
                label = ' aria-label="best"' if is_best else ""
                cells.append(f'<td class="{kind}"{label}>{escape(_num(v))}</td>')
            rows.append(f'<tr><th scope="row" class="num">{step}</th>{"".join(cells)}</tr>')
        return (
            f'<div class="table-wrap" style="max-height:32rem"><table class="{cls}">'
            f"<caption>{escape(caption)}</caption>"
            f'<thead><tr><th scope="col" class="num">step</th>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>"
        )

    def _metrics_multi(self) -> str:
        primary, rest = self._ordered_valid_keys()
        if not primary and not rest:
            return '<p class="empty-note">No validation metrics were logged.</p>'
        html = (
            f'<p class="note">Best value at each step highlighted. {_VALID_SCOPE}</p>'
            f'<div class="grid">{"".join(self._side_by_side(k) for k in primary or rest)}</div>'
        )
        if primary and rest:
            html += (
                f"<details><summary>{len(rest)} more validation values (fewer levels, per "
                f'level)</summary><div class="grid">'
                f"{''.join(self._side_by_side(k) for k in rest)}</div></details>"
            )
        return html

    def _side_by_side(self, key: str) -> str:
        heads = "".join(f'<th scope="col" class="num">{escape(r.label)}</th>' for r in self.runs)
        per_run = []
        for r in self.runs:
            c = r.valid.get(key)
            per_run.append(dict(zip(c.steps, c.values, strict=True)) if c else {})
        common = set.intersection(*(set(d) for d in per_run)) if per_run else set()
        matched = bool(common)
        steps = sorted(common) if matched else sorted(set().union(*per_run))
        rows = []
        for step in steps:
            vals = [d.get(step) for d in per_run]
            finite = [v for v in vals if v is not None and math.isfinite(v)]
            best = best_value(key, finite)
            cells = []
            for v in vals:
                is_best = len(finite) > 1 and v is not None and v == best
                kind = "num best" if is_best else "num"
                label = ' aria-label="best"' if is_best else ""
                cells.append(f'<td class="{kind}"{label}>{escape(_num(v))}</td>')
            rows.append(f'<tr><th scope="row" class="num">{step}</th>{"".join(cells)}</tr>')
        name = _valid_name(key)
        note = "" if matched else " — no step validated by every run; all steps shown"
        return (
            '<div class="table-wrap" style="max-height:26rem"><table class="side-by-side">'
            f"<caption>{escape(name)}{escape(better_text(key))}{escape(note)}</caption>"
            f'<thead><tr><th scope="col" class="num">step</th>{heads}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>"
        )

    # ---------------------------------------------------------------- listening
    def _player(self, media: Media | None, label: str, detail: str) -> str:
        """A labelled audio player with its spectrogram (either may be absent)."""
        if media is None or (media.wav is None and media.png is None):
            return (
                f'<div class="player"><div class="label">{escape(label)}</div>'
                '<p class="empty-note">missing</p></div>'
            )
        parts = []
        dur_text = ""
        if media.wav is not None:
            token, dur = self.store.add_audio(media.wav)
            dur_text = f" <small>{dur:.2f} s</small>"
            aria = escape(f"{label}, {detail}", quote=True)
            parts.append(
                f'<audio controls preload="metadata" src="{token}" aria-label="{aria}" '
                f'data-duration="{dur:.6f}"></audio>'
            )
            self.players += 1
        if media.png is not None:
            token, data = self.store.add_image(media.png)
            size = _png_size(data)
            wh = f' width="{size[0]}" height="{size[1]}"' if size else ""
            alt = escape(f"Mel spectrogram: {label}, {detail}", quote=True)
            parts.append(f'<img src="{token}" alt="{alt}"{wh}>')
            self.images += 1
        head = f'<div class="label">{escape(label)}{dur_text}</div>'
        return f'<div class="player">{head}{"".join(parts)}</div>'

    def _input_cells(self, inputs: list[Media | None], base: str) -> list[str]:
        """Players for the model input of an (input, output, target) clip: one when every
        step / run fed the same input, else one per distinct input; none for other runs."""
        given = [m for m in inputs if m is not None]
        if not given:
            return []
        if _same_audio(given):
            return [self._player(given[0], "input (unprocessed)", base)]
        return [self._player(m, f"input {i + 1}", base) for i, m in enumerate(given)]

    def _versus_input(self) -> str:
        """For runs whose validation scores the unprocessed input too (`input_<metric>`
        beside `<metric>`, e.g. an audio-to-audio model): one row per run at its last
        validation, one row for the input, the artifact measures beside them. Empty when
        no run logged such pairs."""
        keys: list[str] = []
        for r in self.runs:
            for k in r.valid:
                name = _valid_name(k)
                if name.startswith("input_"):
                    continue
                if f"valid/input_{name}" in r.valid and k not in keys:
                    keys.append(k)
        if not keys:
            return ""
        extra = [k for k in ("valid/si_sdr_gain", "valid/onset_pop_db", "valid/spectral_line_db")
                 if any(k in r.valid for r in self.runs)]
        cols = keys + extra
        head = "".join(
            f'<th scope="col" class="num">{escape(_valid_name(k))}'
            f' <span aria-hidden="true">{arrow(k)}</span></th>'
            for k in cols
        )

        def last(run: Run, key: str) -> float | None:
            c = run.valid.get(key)
            return c.values[-1] if c and c.values else None

        rows = []
        for r in self.runs:
            c = r.valid.get(keys[0])
            step = c.steps[-1] if c and c.steps else None
            cells = "".join(
                f'<td class="num">{escape(_num(last(r, k)))}</td>' for k in cols
            )
            rows.append(
                f'<tr><th scope="row">{escape(r.label)}'
                f'{f" <small>step {step}</small>" if step is not None else ""}</th>{cells}</tr>'
            )
        # The input is the same fixed validation set for every run: show the first run's.
        base = self.runs[0]
        cells = "".join(
            f'<td class="num">{escape(_num(last(base, "valid/input_" + _valid_name(k))))}</td>'
            for k in keys
        ) + "".join('<td class="num">—</td>' for _ in extra)
        rows.append(f'<tr class="baseline"><th scope="row">unprocessed input</th>{cells}</tr>')
        return (
            '<p class="note">Each run at its last validation against the unprocessed input on '
            "the same clips: an output row must beat the input row to have done anything. "
            "si_sdr_gain is output minus input SI-SDR (dB); onset_pop_db is the output's first "
            "10 ms energy over the target's (a pop at the start); spectral_line_db is the "
            "largest narrow-band excess of the output over the target (a stationary line). "
            f"{_VALID_SCOPE}</p>"
            '<div class="table-wrap"><table class="versus-input">'
            "<caption>Output against the unprocessed input (↓ lower is better, ↑ higher is "
            "better)</caption>"
            f'<thead><tr><th scope="col">run</th>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>"
        )

    def _listen_single(self) -> str:
        run = self.runs[0]
        steps = pick_evenly(run.audio_steps(), self.listen_steps)
        if not steps:
            return '<p class="empty-note">This run saved no validation audio.</p>'
        bases: list[str] = []
        singles: list[str] = []
        for s in steps:
            bases.extend(b for b in s.pairs() if b not in bases)
            singles.extend(n for n in s.singles() if n not in singles)
        blocks = []
        for base in bases[: self.max_clips]:
            pairs = [(s, s.pairs().get(base, (None, None))) for s in steps]
            refs = [(s, ref) for s, (ref, _) in pairs if ref is not None]
            cells = self._input_cells([s.inputs().get(base) for s in steps], base)
            if refs and _same_audio([ref for _, ref in refs]):
                # The same reference at every step: show it once.
                cells.append(self._player(refs[-1][1], "reference", base))
            else:
                cells.extend(
                    self._player(ref, f"reference at step {s.step}", base) for s, ref in refs
                )
            cells.extend(
                self._player(out, f"output at step {s.step}", base) for s, (_, out) in pairs
            )
            blocks.append(_clip_block(base, cells, "h3"))
        for name in singles[: self.max_clips]:
            cells = [self._player(s.singles().get(name), f"step {s.step}", name) for s in steps]
            blocks.append(_clip_block(name, cells, "h3"))
        shown = ", ".join(str(s.step) for s in steps)
        return (
            f'<p class="note">Validation steps shown: {escape(shown)} '
            f"(of {len(run.audio_steps())} with audio). Playing one player pauses the others."
            f"</p>{''.join(blocks)}"
        )

    def _listen_multi(self) -> str:
        per_run_steps = [{s.step: s for s in r.audio_steps()} for r in self.runs]
        if not any(per_run_steps):
            return '<p class="empty-note">None of these runs saved validation audio.</p>'
        common = sorted(set.intersection(*(set(d) for d in per_run_steps)))
        groups: list[tuple[str, list[ValidStep | None]]]
        if common:
            chosen = pick_evenly(common, self.listen_steps)
            note = (
                f"Steps validated with audio by every run: {len(common)}; shown: "
                f"{', '.join(map(str, chosen))}."
            )
            groups = [(f"Step {step}", [d[step] for d in per_run_steps]) for step in chosen]
        else:
            note = (
                "No validation step has audio from every run; the last step of each run is "
                "shown instead."
            )
            groups = [
                ("Last validation of each run", [d[max(d)] if d else None for d in per_run_steps])
            ]
        blocks = []
        for title, vsteps in groups:
            blocks.append(f"<h3>{escape(title)}</h3>")
            blocks.extend(self._clips_across_runs(vsteps))
        return (
            f'<p class="note">{escape(note)} Playing one player pauses the others.</p>'
            + "".join(blocks)
        )

    def _clips_across_runs(self, vsteps: list[ValidStep | None]) -> list[str]:
        bases: list[str] = []
        singles: list[str] = []
        for vs in vsteps:
            if vs is not None:
                bases.extend(b for b in vs.pairs() if b not in bases)
                singles.extend(n for n in vs.singles() if n not in singles)
        labelled = list(zip(self.runs, vsteps, strict=True))
        blocks = []
        for base in bases[: self.max_clips]:
            pairs = [vs.pairs().get(base, (None, None)) if vs else (None, None) for vs in vsteps]
            refs = [
                (run, ref)
                for (run, _), (ref, _) in zip(labelled, pairs, strict=True)
                if ref is not None
            ]
            cells = self._input_cells(
                [vs.inputs().get(base) if vs else None for vs in vsteps], base
            )
            if refs and _same_audio([ref for _, ref in refs]):
                cells.append(self._player(refs[0][1], "reference", base))
            else:
                cells.extend(
                    self._player(ref, f"reference ({run.label})", base) for run, ref in refs
                )
            for (run, vs), (_, out) in zip(labelled, pairs, strict=True):
                step = f" at step {vs.step}" if vs else ""
                cells.append(self._player(out, f"{run.label}{step}", base))
            blocks.append(_clip_block(base, cells, "h4"))
        for name in singles[: self.max_clips]:
            cells = []
            for run, vs in labelled:
                media = vs.singles().get(name) if vs else None
                step = f" at step {vs.step}" if vs else ""
                cells.append(self._player(media, f"{run.label}{step}", name))
            blocks.append(_clip_block(name, cells, "h4"))
        return blocks


def _clip_block(title: str, cells: list[str], heading: str) -> str:
    return (
        f'<div class="clip"><{heading}>{escape(title)}</{heading}>'
        f'<div class="clip-row">{"".join(cells)}</div></div>'
    )


def _same_audio(items: list[Media]) -> bool:
    """True when every item has a WAV and all hold the same samples at the same rate.

    Decoded samples are compared, not file bytes: float WAVs carry a timestamped PEAK chunk.
    """
    digests = set()
    for m in items:
        if m.wav is None:
            return False
        try:
            audio, sr = sf.read(str(m.wav), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError):
            return False
        digests.add((sr, audio.shape, hashlib.sha1(audio.tobytes()).hexdigest()))
    return len(digests) == 1
