"""Labels of a flat ILSVRC-2012 ``val/`` folder, from a documented file only, checked before use.

A wrong validation label does not fail: it makes every reported error rate wrong. So labels come
from exactly one of two places, and never from a file found by searching around SOURCE:

* the devkit unpacked into SOURCE: ``ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt``.
  Line k holds the ILSVRC2012_ID (1 to 1000, counted from 1) of ``ILSVRC2012_val_000k.JPEG``
  (k zero-padded to 8 digits). The IDs are not the sorted-WNID order; ``meta.mat`` beside the
  file maps them to WNIDs (:mod:`alexnet.data.matfile`). The file must hold 50,000 IDs;
* a file the user names (``--val-labels FILE``): the devkit's ground-truth file (read as above,
  ``meta.mat`` beside it), or "filename label" lines, separated by spaces or commas (Caffe's
  ``val.txt``, Kaggle's ``LOC_val_solution.csv`` whose second field starts with the WNID; a
  first line whose label is a word without digits is a header and skipped). A file name may
  hold spaces: in a ``.csv`` a cell is one field; elsewhere quote the name ("a photo.jpg" n01440764)
  or put the label last, as a line whose second word is no label but whose last is reads so.
  A name matches a file named by its stem, by its path (the last part: val/ is flat), or by the
  same text in another Unicode form
  (composed or decomposed: macOS writes names decomposed). A label is a WNID / class-folder name, or a number
  into the sorted class list; numbers need ``--val-labels-base`` (0 or 1), because a file
  counted from 1 read as counted from 0 shifts every label by one class and nothing fails.

Checks, each refusing with one line: the file is text (no NUL or other control bytes: an image,
a checkpoint or UTF-16 text is named as such, not parsed into lines; bytes that are not UTF-8
are kept, as names on disk may be such bytes, and a UTF-8 byte-order mark is dropped); numbers
in range for the classes of ``train/``; the devkit file has 50,000 entries, and so must a list
that names ``ILSVRC2012_val_*`` files; no file is given two labels; the training classes are
classes of the devkit. Validation images of a class that ``train/`` lacks, or without a label,
are skipped and listed. What was used is recorded in the store's manifest (``val_labels``).
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import shlex
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from alexnet.data.matfile import MatFileError, ilsvrc_id_to_wnid
from alexnet.display import printable
from alexnet.errors import UserError

DEVKIT_DATA = Path("ILSVRC2012_devkit_t12") / "data"
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
META = "meta.mat"
ILSVRC2012_VAL_IMAGES = 50_000
ILSVRC2012_CLASSES = 1_000  # IDs 1..1000 are the leaf classes; meta.mat also lists 860 ancestors
VAL_IMAGE = re.compile(r"^ILSVRC2012_val_(\d{8})\b")
WNID = re.compile(r"^n\d{8}$")
# names a user may have next to the images; never read unless named, but suggested when present
KNOWN_LABEL_FILES = ("val_labels.txt", "val_labels.csv", "val.txt", "LOC_val_solution.csv", GROUND_TRUTH)


@dataclass
class ValLabels:
    """Labels by file: ``by_number`` (ILSVRC2012_val image number -> WNID) or ``by_name``
    (file name or stem -> class id); ``record`` goes into the manifest."""

    by_number: dict[int, str] = field(default_factory=dict)
    by_name: dict[str, str] = field(default_factory=dict)
    record: dict = field(default_factory=dict)
    file: Path | None = None
    _composed: dict[str, str] | None = field(default=None, repr=False)  # by_name with NFC keys, made when needed

    def label_of(self, path: str) -> str | None:
        name = os.path.basename(path)
        if self.by_number:
            m = VAL_IMAGE.match(name)
            return self.by_number.get(int(m.group(1))) if m else None
        found = self.by_name.get(name, self.by_name.get(os.path.splitext(name)[0]))
        if found is None and self.by_name:
            # the same name in another Unicode form: macOS writes names decomposed (NFD), most editors
            # and scripts composed (NFC); names that are not UTF-8 (surrogate escapes) stay as they are
            if self._composed is None:
                self._composed = {_nfc(k): v for k, v in self.by_name.items()}
            found = self._composed.get(_nfc(name), self._composed.get(_nfc(os.path.splitext(name)[0])))
        return found

    def missing_reason(self, path: str) -> str:
        name = os.path.basename(path)
        if self.by_number and not VAL_IMAGE.match(name):
            return "no label: not named ILSVRC2012_val_NNNNNNNN, which is how the devkit's labels name images"
        return "no label for this file"


def _nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def find_val_labels(source: Path, val_root: Path, class_ids: list[str], named: str | os.PathLike | None,
                    base: int | None) -> ValLabels:
    """The labels of ``val_root``'s images: from ``named`` when given, else from the devkit in SOURCE."""
    if base is not None and base not in (0, 1):
        raise UserError(f"--val-labels-base must be 0 or 1 (the number of the first class), got {base}")
    if named is not None:
        path = Path(named).expanduser()
        if not path.is_file():
            what = "does not exist" if not path.exists() else "is not a file"
            raise UserError(f"--val-labels {printable(str(path))} {what}; name the file that labels the images of {printable(str(val_root))}")
        path = path.resolve()
        if path.name == GROUND_TRUTH:
            labels = _devkit(path, class_ids)
        else:
            labels = _listing(path, class_ids, base)
    else:
        if base is not None:
            raise UserError("--val-labels-base is for a file named with --val-labels")
        devkit = source / DEVKIT_DATA / GROUND_TRUTH
        if not devkit.is_file():
            found = [p for d in (source, val_root) for p in (d / n for n in KNOWN_LABEL_FILES) if p.is_file()]
            hint = f" ({printable(str(found[0]))} is there: name it with --val-labels if it is the right one)" if found else ""
            raise UserError(
                f"{printable(str(val_root))} holds images but no labels: unpack the ILSVRC2012 devkit into "
                f"{printable(str(source))} (it reads {DEVKIT_DATA / GROUND_TRUTH}), give a 'filename label' file with "
                f"--val-labels FILE, or sort val/ into class folders{hint}"
            )
        labels = _devkit(devkit, class_ids)
    if base is not None and labels.record.get("first_class_number") is None:
        raise UserError(f"--val-labels-base is for labels given as class numbers; {printable(labels.file.name)} names the classes")
    return labels


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# Bytes no text file of names and labels holds: NUL and the C0 controls but tab, LF, VT, FF, CR; and DEL.
_NOT_TEXT = bytes([*range(0x00, 0x09), *range(0x0E, 0x20), 0x7F])
LISTING_FORMAT = ("a UTF-8 text file of 'filename label' lines (separated by spaces, or by commas in a .csv), "
                  f"or the devkit's {GROUND_TRUTH} (one ILSVRC2012_ID per line) with {META} beside it")


def _require_text(path: Path, expected: str, flag: str = "") -> None:
    """Refuse in one line a file that is not text (an image, a checkpoint, an archive), before it is
    parsed into misleading complaints about its 'lines'. Bytes that are not UTF-8 alone are allowed:
    names on disk may be such bytes, and they are read back unchanged (surrogate escapes)."""
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            if block.translate(None, _NOT_TEXT) != block:
                held = "NUL bytes: binary data, or UTF-16 text" if b"\0" in block else "control bytes: binary data"
                raise UserError(f"{flag}{printable(str(path))} is not a text file ({held}); it must be {expected}")


def _devkit(path: Path, class_ids: list[str]) -> ValLabels:
    """The devkit's ground truth (line k: ID of image k) mapped to WNIDs by meta.mat beside it."""
    shown = printable(str(path))
    _require_text(path, f"the devkit's {GROUND_TRUTH} unchanged, a text file of one ILSVRC2012_ID per line")
    meta = path.parent / META
    if not meta.is_file():
        raise UserError(f"{shown} holds devkit IDs, whose order is not the sorted WNIDs; {META} must be beside it "
                        "(the devkit's data/ folder holds both)")
    try:
        id_to_wnid = ilsvrc_id_to_wnid(meta)
    except MatFileError as e:
        raise UserError(f"{printable(str(e))}; use the meta.mat of the ILSVRC2012 devkit") from None
    tokens = path.read_bytes().split()
    ids = []
    for k, token in enumerate(tokens, start=1):
        if not token.isdigit():
            raise UserError(f"{shown}: entry {k} is {printable(token.decode('utf-8', 'replace'))!r}, not an ILSVRC2012_ID; use the devkit's file unchanged")
        ids.append(int(token))
    if len(ids) != ILSVRC2012_VAL_IMAGES:
        raise UserError(f"{shown} has {len(ids)} entries; the ILSVRC-2012 devkit's has {ILSVRC2012_VAL_IMAGES:,}, "
                        "one per validation image: use the devkit's file unchanged")
    bad = [i for i in ids if not (1 <= i <= ILSVRC2012_CLASSES and i in id_to_wnid)]
    if bad:
        how = " (0 appears: the devkit counts from 1, so this file is not the devkit's)" if 0 in bad else ""
        raise UserError(f"{shown} holds ILSVRC2012_IDs out of the range 1..{ILSVRC2012_CLASSES} that {META} maps "
                        f"(e.g. {bad[0]}){how}; use the devkit's file unchanged")
    devkit_wnids = {id_to_wnid[i] for i in range(1, ILSVRC2012_CLASSES + 1) if i in id_to_wnid}
    foreign = [c for c in class_ids if c not in devkit_wnids]
    if foreign:
        raise UserError(f"train/ has classes that {printable(str(meta))} does not list among the ILSVRC-2012 classes "
                        f"({printable(', '.join(foreign[:3]))}); these labels do not belong to this data")
    record = {"file": str(path), "sha256": _sha256(path), "kind": "ILSVRC2012 devkit ground truth",
              "entries": len(ids), "first_class_number": None, "mapped_by": str(meta)}
    return ValLabels(by_number={k: id_to_wnid[i] for k, i in enumerate(ids, start=1)}, record=record, file=path)


def _one_field(path: Path, line: int) -> UserError:
    return UserError(f"{printable(str(path))} line {line} has one field; expected 'filename label' lines "
                     f"(the devkit's ID-per-line file must keep its name {GROUND_TRUTH}, beside meta.mat)")


def _quoted_fields(path: Path, line: int, text: str) -> list[str]:
    """Fields separated by spaces or tabs, "a double-quoted field" being one (no escapes: a
    backslash is part of a name)."""
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split, lexer.quotes, lexer.escape, lexer.commenters = True, '"', "", ""
    try:
        return list(lexer)
    except ValueError as e:
        raise UserError(f"{printable(str(path))} line {line} cannot be read as 'filename label' ({e})") from None


def _rows(path: Path, is_label) -> list[tuple[int, str, str]]:
    """(line number, file name, label) of every line that is not blank.

    In a ``.csv`` file a cell is one field, spaces included (a file name may hold spaces), and the
    label is the first word of the second cell (Kaggle's "n01751748 2 3 4 5 ..."). Elsewhere fields
    are separated by spaces or tabs, a quoted field is one field, and a line of more than two
    unquoted fields whose second is no label but whose last is (``is_label``) is a file name
    with spaces followed by its label."""
    _require_text(path, LISTING_FORMAT, "--val-labels ")
    rows = []
    # utf-8-sig: a byte-order mark (Windows editors) is not part of the first file name
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        if path.suffix.lower() == ".csv":
            reader = csv.reader(f, delimiter=",")
            try:
                for line, row in enumerate(reader, start=1):
                    cells = [cell.strip() for cell in row]
                    if not any(cells):
                        continue
                    words = cells[1].split() if len(cells) > 1 else []
                    if not cells[0] or not words:
                        raise _one_field(path, line)
                    rows.append((line, cells[0], words[0]))
            except csv.Error as e:
                raise UserError(f"{printable(str(path))} line {reader.line_num} cannot be read as 'filename label' ({e})") from None
            return rows
        for line, text in enumerate(f.read().splitlines(), start=1):
            text = text.strip()
            if not text:
                continue
            if '"' in text:
                fields = _quoted_fields(path, line, text)
            else:
                fields = text.split()
                if len(fields) > 2 and not is_label(fields[1]) and is_label(fields[-1]):
                    fields = text.rsplit(None, 1)
            if len(fields) < 2:
                raise _one_field(path, line)
            rows.append((line, fields[0], fields[1]))
    return rows


def _listing(path: Path, class_ids: list[str], base: int | None) -> ValLabels:
    """'filename label' lines, checked against the class list."""
    shown = printable(str(path))
    known = set(class_ids)

    def kind(label: str) -> str:
        if label in known:  # a class-folder name, even one made of digits
            return "name"
        return "number" if label.isdigit() else "name" if WNID.match(label) else "other"

    rows = _rows(path, lambda label: kind(label) != "other")
    if rows and kind(rows[0][2]) == "other" and not any(ch.isdigit() for ch in rows[0][2]):
        rows = rows[1:]  # a header line ("ImageId,PredictionString"); a mistyped WNID is no header
    if not rows:
        raise UserError(f"{shown} has no 'filename label' lines")
    kinds = {kind(label) for _, _, label in rows}
    if "other" in kinds:
        line, _, label = next(r for r in rows if kind(r[2]) == "other")
        raise UserError(f"{shown} line {line}: {printable(label)!r} is neither a class of train/ nor a class number")
    if len(kinds) > 1:
        raise UserError(f"{shown} mixes class names and class numbers; use one or the other")
    numbers = kinds == {"number"}
    if numbers:
        values = [int(label) for _, _, label in rows]
        if base is None:
            raise UserError(
                f"{shown} gives classes as numbers ({min(values)} to {max(values)}) for {len(class_ids)} classes; "
                "say where they start with --val-labels-base 0 or --val-labels-base 1 (the number of the first sorted class)"
            )
        for (line, _, _), v in zip(rows, values):
            if not base <= v < base + len(class_ids):
                raise UserError(f"{shown} line {line}: class number {v} is out of range {base}..{base + len(class_ids) - 1} "
                                f"for the {len(class_ids)} classes of train/ counted from {base}")
    by_name: dict[str, str] = {}
    for line, name, label in rows:
        wnid = class_ids[int(label) - base] if numbers else label
        name = name.rsplit("/", 1)[-1]  # "val/x.JPEG": val/ is flat (no file name holds a "/")
        if by_name.setdefault(name, wnid) != wnid:
            raise UserError(f"{shown} line {line}: {printable(name)} is labelled twice, differently")
    if all(VAL_IMAGE.match(n) for n in by_name) and len(by_name) != ILSVRC2012_VAL_IMAGES:
        raise UserError(f"{shown} labels {len(by_name)} ILSVRC2012_val images; the ILSVRC-2012 validation set has "
                        f"{ILSVRC2012_VAL_IMAGES:,}: give the complete file (for a subset of the classes too: "
                        "validation images of classes that train/ lacks are skipped)")
    record = {"file": str(path), "sha256": _sha256(path), "kind": "filename-label list", "entries": len(by_name),
              "first_class_number": base if numbers else None, "mapped_by": None}
    return ValLabels(by_name=by_name, record=record, file=path)
