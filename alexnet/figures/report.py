"""One page per run: the recipe, the metrics, the curves, conv1's kernels and any evaluation results.

The page is a single self-contained HTML file (the PNGs are embedded as base64), so it opens in
any browser, can be mailed or archived on its own, and never points at files that have moved.
By default it is written into the run directory as ``report.html``.

What it gathers from a run directory (``alexnet train --out RUN``):

* ``config.json``: every recipe key beside the paper's default; keys that differ are highlighted.
* ``metrics.jsonl``: one table row per epoch; ``curves.png`` (drawn again if missing).
* ``best.pt`` (else ``last.pt``): the data set (classes, image size), the parameter count and
  conv1's kernels (figure 3, one block per tower).
* ``log.txt``: what the run printed besides its epochs (starts, notes, warnings, how each start ended).
* Evaluation results, when present: any ``*.json`` file in the run directory holding
  ``top1_error`` and ``top5_error`` (e.g. ``alexnet evaluate RUN DATA --json > RUN/eval.json``, or
  the ``result.json`` that ``alexnet experiment ablations`` writes), and any other PNG in it
  (e.g. ``alexnet show neighbours ... --out RUN/neighbours.png``).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import fields
from pathlib import Path

from alexnet.atomic import atomic_write_bytes
from alexnet.config import RUNTIME_KEYS, TrainConfig
from alexnet.display import printable
from alexnet.errors import UserError


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The lines of a run's metrics.jsonl, the one reader of that file (for this page, and for the
    run itself when it resumes): none when it has none yet; a last line cut short by a crash is
    left out; a damaged line before it is an error."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    lines = []
    for number, line in enumerate(rows, 1):
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(rows):
                break
            raise UserError(f"{path} line {number} is damaged; remove that line to continue") from None
    return lines


def paper_differences(values: dict) -> dict[str, tuple]:
    """{key: (paper's default, this value)} for the recipe keys of ``values`` that differ from the paper."""
    paper = TrainConfig()
    changed = {}
    for f in fields(TrainConfig):
        if f.name in values and f.name not in RUNTIME_KEYS:
            value = values[f.name]
            value = tuple(value) if isinstance(value, list) else value
            if value != getattr(paper, f.name):
                changed[f.name] = (getattr(paper, f.name), value)
    return changed


def _png(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _fmt(value) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _raw(value) -> str:
    """A config value as written (no rounding)."""
    return ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _table(header: list[str] | None, rows: list[list], row_classes: list[str] | None = None) -> str:
    head = "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead>" if header else ""
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>")
    return f"<table>{head}<tbody>{''.join(body)}</tbody></table>"


def _evaluations(run: Path) -> list[tuple[str, dict]]:
    found = []
    for path in sorted(run.glob("*.json")):
        if path.name == "config.json" or not path.is_file():
            continue
        try:
            text = path.read_text(errors="replace").strip()
        except OSError:  # unreadable: not a result this page can show
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            try:  # e.g. the output of 'alexnet evaluate --json' after other lines
                value = json.loads(text.splitlines()[-1]) if text else None
            except json.JSONDecodeError:
                continue
        if isinstance(value, dict) and any(k in value for k in ("top1_error", "val_top1_error")):
            found.append((path.name, value))
    return found


def _evaluation_rows(name: str, value: dict) -> list[list]:
    rows = []
    for key in ("top1_error", "top5_error", "val_top1_error", "val_top5_error", "train_top1_error", "gap_top1"):
        if isinstance(value.get(key), (int, float)):
            rows.append([name, key, f"{100 * value[key]:.2f}%"])
    for key in ("images", "ten_crop", "split", "epochs", "checkpoints"):
        if key in value:
            rows.append([name, key, value[key]])
    return rows


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _percent(value) -> str:
    return f"{100 * value:.2f}%" if _is_number(value) else "-"


def _is_png(path: Path) -> bool:
    """Whether ``path`` is a file that starts as a PNG does (a broken or mislabelled one is left out of the page)."""
    try:
        with open(path, "rb") as f:
            return f.read(8) == b"\x89PNG\r\n\x1a\n"
    except OSError:
        return False


def _progress(payload: dict) -> str:
    """`` (epoch N)`` of a best.pt, `` (after N epochs)`` of a last.pt (its position in the data), or nothing."""
    if _is_number(payload.get("epoch")):
        return f" (epoch {payload['epoch']})"
    progress = payload.get("progress")
    if not isinstance(progress, dict) or not _is_number(progress.get("epoch")):
        return ""
    steps = progress.get("step_in_epoch")
    more = f" and {steps} step(s)" if _is_number(steps) and steps > 0 else ""
    return f" (after {progress['epoch']} epoch(s){more})"


def _checkpoint(run: Path) -> tuple[Path | None, dict | None, str]:
    """(the checkpoint shown, its payload, why the others could not be read): best.pt, else last.pt.

    A damaged best.pt (an empty file, a copy cut short) falls back to last.pt, and the page says
    so; when no checkpoint there can be read, the first one's error stops the report."""
    from alexnet import trained

    problems: list[UserError] = []
    for name in ("best.pt", "last.pt"):
        path = run / name
        if not path.is_file():
            continue
        try:
            return path, trained.load(path), " ".join(f"{e}; {path.name} is shown instead." for e in problems)
        except UserError as e:
            problems.append(e)
    if problems:
        raise problems[0]
    return None, None, ""


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of ``run_dir`` to ``out`` (default ``run_dir/report.html``); returns its path."""
    from alexnet.figures.plots import output_file

    run = Path(run_dir)
    config = _recipe_of(run)
    out = output_file(out, run / "report.html", suffixes=(".html", ".htm"))
    # Rows that are not a table of measures (a damaged line, another file's content) are left out.
    metrics = [m for m in read_metrics(run) if isinstance(m, dict) and _is_number(m.get("epoch"))]
    ckpt_path, payload, unreadable = _checkpoint(run)
    top5 = _top5_shown(payload)
    sections = [f"<h1>AlexNet run: {html.escape(run.name or str(run))}</h1>",
                *_summary(config, metrics, ckpt_path, payload, unreadable, top5), *_metrics(run, metrics, top5),
                *_kernels(payload), *_recipe(config), *_run_log(run), *_evaluations_section(run)]
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>AlexNet run {html.escape(run.name)}</title><style>"
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}"
        "tr.changed td{background:#fff3c4;font-weight:bold}.muted{color:#777}.warn{color:#a40}"
        "img{max-width:100%;border:1px solid #eee}</style></head><body>"
        + "\n".join(sections) + "</body></html>\n"
    )
    # Names that are not valid UTF-8 (class folders, file names) are shown with U+FFFD; the page is
    # written whole or not at all, so a failed write keeps the previous report.
    atomic_write_bytes(out, printable(page).encode("utf-8"))
    return out


def _recipe_of(run: Path) -> dict:
    """The recipe in ``run``'s config.json, or a UserError saying why ``run`` is not a run directory."""
    if not run.is_dir():
        raise UserError(f"run directory {run} does not exist; give the --out folder of 'alexnet train'")
    config_file = run / "config.json"
    if not config_file.is_file():
        raise UserError(f"{run} is not a run directory (no config.json); give the --out folder of 'alexnet train'")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{config_file} is damaged (not JSON)") from None
    if not isinstance(config, dict):
        raise UserError(f"{config_file} is damaged: it holds a JSON {type(config).__name__}, not a recipe (a table of keys)")
    return config


def _top5_shown(payload: dict | None) -> bool:
    """Whether top-5 errors say anything: not with five classes or fewer (always 0 there)."""
    from alexnet.evaluate import top5_is_informative

    classes = (payload or {}).get("data", {}).get("classes")
    return not isinstance(classes, list) or top5_is_informative(len(classes))


def _summary(config: dict, metrics: list[dict], ckpt_path: Path | None, payload: dict | None,
             unreadable: str, top5: bool = True) -> list[str]:
    """Epochs done, the last and best errors, the time, the data and the checkpoint shown; a warning
    when a checkpoint could not be read, or when the loss still sits at chance."""
    facts = [["epochs done", f"{len(metrics)} of {config.get('epochs', '?')}"]]
    if metrics:
        last = metrics[-1]
        top1 = f"{_percent(last.get('val_top1_error'))}"
        facts += ([["last epoch: validation top-1 / top-5 error",
                    f"{top1} / {_percent(last.get('val_top5_error'))} (centre crop)"]] if top5
                  else [["last epoch: validation top-1 error", f"{top1} (centre crop)"]])
        scored = [m for m in metrics if _is_number(m.get("val_top1_error")) and math.isfinite(m["val_top1_error"])]
        if scored:
            best = min(scored, key=lambda m: m["val_top1_error"])
            facts += [["best validation top-1 error", f"{_percent(best['val_top1_error'])} (epoch {best['epoch']})"]]
        seconds = sum(m["epoch_seconds"] for m in metrics if _is_number(m.get("epoch_seconds")))
        facts += [["training time", f"{seconds / 60:.1f} minutes"]]
    if payload is not None:
        data = payload.get("data", {})
        classes = list(data.get("classes", []))
        shown = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
        facts += [["data", f"{len(classes)} classes ({shown}), {data.get('image_size')} px, "
                           f"{data.get('channels')} channel(s)"],
                  ["parameters", f"{sum(t.numel() for t in payload['model'].values()):,}"],
                  ["checkpoint shown", ckpt_path.name + _progress(payload)]]
    sections = ["<h2>Summary</h2>", _table(None, facts)]
    if unreadable:
        sections.append("<p class='warn'>" + html.escape(unreadable) + "</p>")
    if metrics and "classes" in (payload or {}).get("data", {}) and _is_number(metrics[-1].get("train_loss")):
        chance = math.log(len(payload["data"]["classes"]))
        if chance > 0 and abs(metrics[-1]["train_loss"] - chance) < 0.05 * chance:
            sections.append(f"<p class='warn'>The training loss is still at ln(classes) = {chance:.3f} (chance): the "
                            "paper's init (N(0, 0.01), biases 1) is known to stall like this; try init 'he', a smaller "
                            "input_scale or a lower lr.</p>")
    return sections


def _recipe(config: dict) -> list[str]:
    """The keys of the run's recipe that differ from the paper's, then every key (folded away)
    beside the paper's value, those that differ highlighted."""
    changed = paper_differences(config)
    paper = TrainConfig()
    rows, classes = [], []
    for f in fields(TrainConfig):
        if f.name not in config:
            continue
        note = "runtime" if f.name in RUNTIME_KEYS else ("differs" if f.name in changed else "")
        rows.append([f.name, _raw(config[f.name]), _raw(getattr(paper, f.name)), note])
        classes.append("changed" if f.name in changed else "")
    extra = sorted(set(config) - {f.name for f in fields(TrainConfig)})
    rows += [[k, config[k], "", "unknown key"] for k in extra]
    classes += ["changed"] * len(extra)
    differ = [row[:3] for row, cls in zip(rows, classes) if cls]
    return ["<h2>Recipe</h2>", f"<p>{len(changed)} recipe value(s) differ from the paper's"
            + (":</p>" + _table(["key", "this run", "paper"], differ) if differ else ".</p>"),
            "<details><summary>every key of the recipe</summary>",
            _table(["key", "this run", "paper", ""], rows, classes), "</details>"]


def _metrics(run: Path, metrics: list[dict], top5: bool = True) -> list[str]:
    """The curves (curves.png, or drawn again when it is missing) and one table row per epoch."""
    from alexnet.figures.plots import plot_curves

    if not metrics:
        return ["<h2>Metrics</h2>", "<p>No epoch has finished yet.</p>"]
    keys = [("epoch", "epoch"), ("train_loss", "train loss"), ("train_top1_error", "train top-1 %"),
            ("val_top1_error", "val top-1 %"), ("val_top5_error", "val top-5 %"), ("lr", "lr"),
            ("images_per_s", "images/s"), ("epoch_seconds", "seconds")]
    keys = [k for k in keys if top5 or k[0] != "val_top5_error"]
    table_rows = [[(f"{100 * m[k]:.2f}" if k.endswith("error") and _is_number(m.get(k)) else m.get(k, ""))
                   for k, _ in keys] for m in metrics]
    curves = run / "curves.png"
    if _is_png(curves):
        image = curves.read_bytes()
    else:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            image = plot_curves(metrics, Path(tmp) / "curves.png").read_bytes()
    return ["<h2>Training curves</h2>", _png(image, "training curves"),
            "<h2>Metrics per epoch</h2>", _table([h for _, h in keys], table_rows)]


def _kernels(payload: dict | None) -> list[str]:
    """conv1's kernels as the paper's figure 3, one block per tower (nothing without a checkpoint)."""
    if payload is None or "features.conv1.weight" not in payload["model"]:
        return []
    from PIL import Image

    from alexnet.figures.plots import filter_image

    weight = payload["model"]["features.conv1.weight"]
    towers = int(payload.get("model_args", {}).get("towers", 1))
    buffer = io.BytesIO()
    Image.fromarray(filter_image(weight, towers=towers)).save(buffer, "PNG")
    return ["<h2>conv1 kernels (figure 3)</h2>",
            f"<p>{weight.shape[0]} kernels of {weight.shape[2]}x{weight.shape[3]}x{weight.shape[1]}, "
            f"one block per tower ({towers}).</p>", _png(buffer.getvalue(), "conv1 kernels")]


def _run_log(run: Path, keep_lines: int = 300) -> list[str]:
    """What the run printed besides its epochs (starts, notes, warnings, how each start ended): the
    last ``keep_lines`` such lines of log.txt; nothing when there is no log."""
    path = run / "log.txt"
    if not path.is_file():
        return []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    events = [line for line in lines if not line[20:].startswith("epoch ")]
    if not events:
        return []
    shown = events if len(events) <= keep_lines else ["...", *events[-keep_lines:]]
    return ["<h2>Run log</h2>", "<p class='muted'>log.txt without its epoch lines (the metrics table "
            "holds those)</p>", "<pre>" + html.escape("\n".join(shown)) + "</pre>"]


def _evaluations_section(run: Path) -> list[str]:
    """The evaluation results found in ``run``, then every other PNG there."""
    sections = []
    evaluations = _evaluations(run)
    if evaluations:
        rows = [r for name, value in evaluations for r in _evaluation_rows(name, value)]
        sections += ["<h2>Evaluation results</h2>", _table(["file", "measure", "value"], rows)]
    for p in sorted(run.glob("*.png")):
        if p.name not in ("curves.png", "filters.png") and _is_png(p):  # both are on the page already
            sections += [f"<h2>{html.escape(p.name)}</h2>", _png(p.read_bytes(), p.name)]
    return sections
