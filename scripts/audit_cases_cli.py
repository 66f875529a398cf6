"""The audit's command-line cases (issue #28 sections 4-5): outputs that are inputs, folders,
read-only, under /proc or missing; values out of range; a model fed the other kind of input; files
that are not what they claim; damaged weights; noisy or wrong messages. Commands are templates
(``Ctx.args``); each case returns an :class:`audit_hardening.Outcome`; see ``audit_hardening.py``."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from audit_hardening import Ctx, Outcome, cli, refused, succeeded

CASES: list[tuple[str, str, Callable[[Ctx], Outcome]]] = []
FAST_EXPORT = "--method dense --calib-samples 2 --latency-runs 0 --no-simplify"
TINY_COMPRESS = (
    "--target-retention 0.5 --approx-steps 1 --threshold-steps 1 --search-steps 1 --bench-runs 1 "
    "--holdout 10 --no-concrete --batch-size 4"
)


def add(section: str, name: str, fn: Callable[[Ctx], Outcome]) -> None:
    CASES.append((section, name, fn))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- 4: no command writes onto its own input (name, the input that must survive, the command) -----

ONTO_INPUT = [
    ("bench MODEL --json MODEL", "{vit_onnx}", "bench {vit_onnx} --json {vit_onnx}"),
    ("bench MODEL --json (its tokenizer)", "{tokenizer}", "bench {bert_onnx} --json {tokenizer}"),
    (
        "bench MODEL.tflite --json (its sidecar)",
        "{vit_tflite}.json",
        "bench {vit_tflite} --json {vit_tflite}.json",
    ),
    (
        "verify --json onto the file's tokenizer",
        "{tokenizer}",
        "verify {bert_onnx} --reference {bert} --data {dev} --json {tokenizer}",
    ),
    (
        "verify --json onto the TFLite sidecar",
        "{vit_tflite}.json",
        "verify {vit_tflite} --reference {vit} --data {imgs} --json {vit_tflite}.json",
    ),
    (
        "show --out onto its input image",
        "{ok_png}",
        "show --model {vit} --image {ok_png} --method topk --out {ok_png}",
    ),
    (
        "verify --json onto the file verified",
        "{vit_onnx}",
        "verify {vit_onnx} --reference {vit} --data {imgs} --json {vit_onnx}",
    ),
    (
        "eval --json onto the model's config.json",
        "{vit}/config.json",
        "eval --model {vit} --data {imgs} --json {vit}/config.json",
    ),
    (
        "export --json onto the model's config.json",
        "{vit}/config.json",
        f"export --model {{vit}} --out {{work}}/x.onnx --json {{vit}}/config.json {FAST_EXPORT}",
    ),
    (
        "export --out onto the calibration TSV's folder file",
        "{dev}",
        f"export --model {{bert}} --calib {{dev}} --out {{dev}} {FAST_EXPORT}",
    ),
    (
        "train --out = --data",
        "{imgs}/a/0.png",
        "train approx --model {vit} --data {imgs} --out {imgs} --steps 1",
    ),
    (
        "compress --out = --model",
        "{vit}/config.json",
        f"compress --model {{vit}} --data {{imgs}} --out {{vit}} {TINY_COMPRESS}",
    ),
]


def _onto_input(keep: str, command: str) -> Callable[[Ctx], Outcome]:
    def check(ctx: Ctx) -> Outcome:
        copies = {
            k.replace(".", "_"): ctx.copy_export(k, "onto") for k in ctx.exports
        }  # a failure breaks a copy
        copies["tokenizer"] = copies["bert_onnx"].with_name("bert.tokenizer.json")
        path = Path(ctx.args(keep, **copies)[0])
        before = sha(path)
        out = refused(cli(*ctx.args(command, **copies)))
        changed = sha(path) != before
        return Outcome(out.held and not changed, ("INPUT CHANGED; " if changed else "") + out.detail)

    return check


for _name, _keep, _command in ONTO_INPUT:
    add("4 inputs", _name, _onto_input(_keep, _command))


# ---- 5: output paths: a folder for a file (or a file for a folder), read-only, /proc, missing folders --

OUTPUTS = {  # command -> (template with {out}, "file" or "dir", suffix)
    "bench --json": ("bench {vit_onnx} --runs 2 --warmup 0 --json {out}", "file", ".json"),
    "bench --plot": ("bench {vit_onnx} --runs 2 --warmup 0 --plot {out}", "file", ".png"),
    "eval --json": ("eval --model {vit} --data {imgs} --max-samples 4 --json {out}", "file", ".json"),
    "verify --json": (
        "verify {vit_onnx} --reference {vit} --data {imgs} --max-samples 4 --json {out}",
        "file",
        ".json",
    ),
    "show --out": ("show --model {vit} --image {ok_png} --method topk --out {out}", "file", ".png"),
    "export --out": (f"export --model {{vit}} --out {{out}} {FAST_EXPORT}", "file", ".onnx"),
    "train --out": (
        "train approx --model {vit} --data {imgs} --out {out} --steps 1 --batch-size 4",
        "dir",
        "",
    ),
    "compress --out": (f"compress --model {{vit}} --data {{imgs}} --out {{out}} {TINY_COMPRESS}", "dir", ""),
}


def _output_case(name: str, where: str) -> Callable[[Ctx], Outcome]:
    template, kind, suffix = OUTPUTS[name]

    def check(ctx: Ctx) -> Outcome:
        if where == "wrong kind":  # an existing folder where a file goes, or the reverse
            target = ctx.fresh("kind") / f"out{suffix}"
            target.mkdir() if kind == "file" else target.write_text("a file")
            return refused(cli(*ctx.args(template, out=target)))
        if where == "read-only":
            if ctx.readonly is None:
                return Outcome(False, "no read-only folder could be made here (chattr unavailable)")
            return refused(cli(*ctx.args(template, out=ctx.readonly / f"out{suffix}")), "not writable")
        if where == "/proc":  # takes no new file, though access(2) tells root it is writable
            return refused(cli(*ctx.args(template, out=f"/proc/sttabt-audit/out{suffix}")), "/proc")
        target = ctx.fresh("missing") / "new" / "deeper" / f"out{suffix}"  # missing folders are created
        run = cli(*ctx.args(template, out=target))
        written = target.is_dir() if kind == "dir" else target.is_file()
        return succeeded(run, check=lambda: None if written else f"{target} was not written")

    return check


for _name, (_t, _kind, _s) in OUTPUTS.items():
    _wrong = "an existing folder" if _kind == "file" else "an existing file"
    for _where, _label in (
        ("wrong kind", _wrong),
        ("read-only", "a read-only folder"),
        ("/proc", "under /proc"),
    ):
        add("5 outputs", f"{_name}: {_label}", _output_case(_name, _where))
    add("5 outputs", f"{_name}: missing folders are created", _output_case(_name, "missing"))


# ---- 5: values and inputs, refused up front: (name, command, words the error names) ------------------------

VALUES = [  # name | command (a template, Ctx.args) | what the error line must name
    "train --epochs inf | train approx --model {vit} --data {imgs} --out {work}/t1 --steps 0 --epochs inf | --epochs",
    "bench --seq-len 100000 | bench {bert_onnx} --seq-len 100000 | --seq-len",
    "train --batch-size 100000 | train approx --model {vit} --data {imgs} --out {work}/t2 --batch-size 100000 | --batch-size",
    "eval --batch-size 100000 | eval --model {vit} --data {imgs} --batch-size 100000 | --batch-size",
    "bench --batch 100000 | bench {vit_onnx} --batch 100000 | --batch",
    "export --batch 100000 | export --model {vit} --out {work}/b.onnx --batch 100000 {fast_export} | --batch",
    "compress --budget-minutes nan | compress --model {vit} --data {imgs} --out {work}/c1 --target-retention 0.5 --budget-minutes nan | --budget-minutes",
    "compress --max-drop nan | compress --model {vit} --data {imgs} --out {work}/c2 --max-drop nan | --max-drop",
    "export --opset 0 (no IR on stdout) | export --model {vit} --out {work}/o.onnx --opset 0 {fast_export} | --opset",
    "export --keep-ratio 0 | export --model {vit} --out {work}/k.onnx --method topk --keep-ratio 0 | --keep-ratio",
    "export --calib-samples 0 | export --model {vit} --out {work}/k.onnx --method dense --calib-samples 0 | --calib-samples",
    "export --target tflite --quantize int8-static | export --model {vit} --out {work}/q.tflite --target tflite --method dense --quantize int8-static | int8-static",
    "train --max-eval-samples -1 | train approx --model {vit} --data {imgs} --out {work}/t3 --max-eval-samples -1 | --max-eval-samples",
    "eval --max-samples -1 | eval --model {vit} --data {imgs} --max-samples -1 | --max-samples",
    "verify --max-samples -1 | verify {vit_onnx} --reference {vit} --data {imgs} --max-samples -1 | --max-samples",
    "eval --keep-ratio nan | eval --model {vit} --data {imgs} --method topk --keep-ratio nan | --keep-ratio",
    "show --keep-ratio 2 | show --model {vit} --image {ok_png} --method topk --keep-ratio 2 --out {work}/s.png | --keep-ratio",
    "run --top-k 0 | run {vit_onnx} --image {ok_png} --top-k 0 | --top-k",
    "bench --threads 0 | bench {vit_onnx} --threads 0 | --threads",
    "bench --runs 0 | bench {vit_onnx} --runs 0 | --runs",
    "bench --warmup -1 | bench {vit_onnx} --warmup -1 | --warmup",
    "train --lr nan | train approx --model {vit} --data {imgs} --out {work}/t4 --lr nan | --lr",
    "bench --vs an image and a text model | bench {vit_onnx} --vs {bert_onnx} | text model",
    "train baseline without --method | train baseline --model {vit} --data {imgs} --out {work}/t5 | --method",
    "run: a text model given --image | run {bert_onnx} --image {ok_png} | pass --text, not --image",
    "run: an image model given --text (not reversed) | run {vit_onnx} --text hello | pass --image, not --text",
    "eval: a text model given an image folder | eval --model {bert} --data {imgs} | text model",
    "eval: an image model given a TSV | eval --model {vit} --data {dev} | image model",
    "show: a text model given --image | show --model {bert} --image {ok_png} --method topk --out {work}/s.html | text model",
    "train: an image model given text data | train approx --model {vit} --data {train_tsv} --out {work}/t6 | image model",
    "verify: a text file against an image model | verify {bert_onnx} --reference {vit} --data {imgs} | image model",
    "bench --inputs: images for a text model | bench {bert_onnx} --inputs {imgs} | ",
    "run --image X --text Y | run {vit_onnx} --image {ok_png} --text hello | --image",
    "run: an empty text | run {bert_onnx} --text | ",
    "run: a missing model file | run {work}/nothing.onnx --image {ok_png} | nothing.onnx",
    "run: a model file named .txt | run {dev} --text hello | ",
    "run: an image that is a folder | run {vit_onnx} --image {imgs} | ",
    "run: an image that is a text file | run {vit_onnx} --image {dev} | ",
    "info: a missing model folder | info --model {work}/nothing | nothing",
    "eval: missing --data | eval --model {vit} --data {work}/nothing | nothing",
    "export --target tflite --fuse | export --model {vit} --out {work}/f.tflite --method dense --target tflite --fuse | ONNX-only",
    "export --target tflite --batch 2 | export --model {vit} --out {work}/f.tflite --method dense --target tflite --batch 2 | batch of 1",
    "export --slots bound for ONNX | export --model {vit} --out {work}/f.onnx --method dense --slots bound | --slots",
    "export --approx-heads 3 (the model has 4) | export --model {vit} --out {work}/a.onnx --approx untrained --approx-heads 3 | heads must divide",
    "export --approx-factor 1000 | export --model {vit} --out {work}/a.onnx --approx untrained --approx-factor 1000 | does not fit",
    "compress --approx-factor 1000 | compress --model {vit} --data {imgs} --out {work}/c3 --max-drop 1 --approx-factor 1000 | does not fit",
    "compress --approx a plain folder | compress --model {vit} --data {imgs} --out {work}/c4 --max-drop 1 --approx {imgs} | not an ApproxNet folder",
    "compress --max-drop and --target-retention | compress --model {vit} --data {imgs} --out {work}/c5 --max-drop 1 --target-retention 0.5 | exactly one",
    "compress --search-steps 0 | compress --model {vit} --data {imgs} --out {work}/c6 --max-drop 1 --search-steps 0 | --search-steps",
    "compress --max-length 100 on 64 positions | compress --model {bert} --data {sst2} --out {work}/c7 --max-drop 1 --max-length 100 | 64 positions",
    "train approx --heads 3 | train approx --model {vit} --data {imgs} --out {work}/t7 --heads 3 | heads must divide",
    "train approx --factor 1000 | train approx --model {vit} --data {imgs} --out {work}/t8 --factor 1000 | does not fit",
    "train concrete --approx a plain folder | train concrete --model {vit} --data {imgs} --out {work}/t9 --approx {imgs} | not an ApproxNet folder",
    "train concrete --hard-frac 1 | train concrete --model {vit} --data {imgs} --out {work}/t10 --approx {work}/approx --hard-frac 1 | --hard-frac",
    "train --amp int4 | train approx --model {vit} --data {imgs} --out {work}/t11 --amp int4 | amp",
    "eval --method sttabt without --approx | eval --model {vit} --data {imgs} --method sttabt | --approx",
    "eval --min-keep 0 | eval --model {vit} --data {imgs} --min-keep 0 | --min-keep",
    "eval --occupancy-length -3 | eval --model {vit} --data {imgs} --occupancy-length -3 | --occupancy-length",
    "show without --image or --text | show --model {vit} --out {work}/s.png --method topk | --image",
    "run without an input | run {vit_onnx} | --image",
    "run --threads 100000 | run {vit_onnx} --image {ok_png} --threads 100000 | --threads",
    "bench --block 0 | bench {vit_onnx} --block 0 | --block",
    "bench --input-limit 0 | bench {vit_onnx} --input-limit 0 | --input-limit",
    "verify --batch-size 0 | verify {vit_onnx} --reference {vit} --data {imgs} --batch-size 0 | --batch-size",
    "info: a folder without config.json | info --model {imgs} | config.json",
]


def _value_case(command: str, needle: str) -> Callable[[Ctx], Outcome]:
    def check(ctx: Ctx) -> Outcome:
        words = ctx.args(command) + ([""] if command.endswith("--text") else [])
        return refused(cli(*words), needle)

    return check


for _line in VALUES:
    _name, _command, _needle = (part.strip() for part in _line.split("|"))
    add("5 values", _name, _value_case(_command.replace("{fast_export}", FAST_EXPORT), _needle))

TEXTS = [  # words with spaces or bytes no template holds
    ("run: a whitespace-only text", "   \t ", "empty"),
    ("run: a pair with an empty part", "a good film |||  ", "empty"),
    (
        "run: a text of undecodable bytes (lone surrogates)",
        b"bad \xff\xfe text".decode("utf-8", "surrogateescape"),
        "",
    ),
    ("run: a text over the model's 64 tokens", " ".join(["film"] * 200), "truncate"),
]
for _name, _text, _needle in TEXTS:
    add(
        "5 values",
        _name,
        lambda c, t=_text, n=_needle: refused(cli("run", c.exports["bert.onnx"], "--text", t), n),
    )
add(
    "5 values",
    "run --truncate: the long text is answered",
    lambda c: succeeded(
        cli("run", c.exports["bert.onnx"], "--text", " ".join(["film"] * 200), "--truncate"), quiet=True
    ),
)


# ---- 5: third-party noise without --verbose, machine-readable output ---------------------------------------

QUIET = [
    ("run a .tflite: no LiteRT 'XNNPACK delegate' line", "run {vit_tflite} --image {ok_png}"),
    ("bench a .tflite: nothing on stderr", "bench {vit_tflite} --runs 2 --warmup 0"),
    ("info: nothing on stderr", "info --model {bert}"),
    ("run --json: nothing on stderr", "run {vit_onnx} --image {ok_png} --json"),
]
for _name, _command in QUIET:
    add("5 noise", _name, lambda c, t=_command: succeeded(cli(*c.args(t)), quiet=True))
