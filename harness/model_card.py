"""Model cards (``README.md``) for fused models, in the Hugging Face format: YAML metadata, then Markdown.

Every fused model folder that FuseBench builds (an artifact, :mod:`harness.runner`) gets its card when it is built:

* metadata: ``base_model`` (the sources and the target that are Hub models: a Hub id, or a zoo member converted
  from a Hub checkpoint; the tiny zoo's own members and local folders are not on the Hub, so they are named in the
  card's text only, never as an id the Hub would reject), ``tags`` (``fusebench``, ``fusion``, the fuser's name,
  and ``merge`` / ``mergekit`` for a weight merge), ``library_name: transformers``, and ``license`` when every
  source and the target declare the same one (in their own card's metadata or, for zoo members, their ``zoo.json``);
  otherwise it is left out and the text lists each model's license;
* the method, with its paper, and the models, each with its role, Hub id and license;
* the exact configuration: the fuser's arguments as YAML, and the mergekit config (a user's own, byte for byte, or
  the one FuseBench wrote from its settings);
* how to load it, and that uploading is the user's ``huggingface-cli upload``.

Scores are not in the artifact's card: the evaluations run after the model is built, and one artifact may be
evaluated by many runs (it is cached by content). `bench export RUN --out DIR` (:mod:`harness.export`) writes the
card again, with the scores of that run from the results DB (:func:`scores_markdown`): the fused model, the target
and the sources, each suite's primary metric on its summary tasks with its 95% interval.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from harness import markdown as md

if TYPE_CHECKING:
    from harness.store import Store

CARD_FILE = "README.md"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_URL = re.compile(r"^https://huggingface\.co/([A-Za-z0-9][\w.-]*/[\w.-]+)/?$")
_MERGE_TAGS = ("merge", "mergekit")


@dataclass(frozen=True)
class ModelInfo:
    """A model the fused model was made from: its ``role`` (source / target), the reference as given (``spec``), its
    Hub id and license when known."""

    role: str
    spec: str
    hub_id: str | None
    license: str | None


def _folder_of(spec: str) -> Path | None:
    """The folder a reference points to here, if any (a zoo member's, a local folder); None for Hub ids."""
    from harness import paths

    if spec.startswith("zoo:"):
        folder = paths.zoo_dir() / spec[4:]
        return folder if folder.is_dir() else None
    folder = Path(spec).expanduser()
    return folder if folder.is_dir() else None


def _card_metadata(readme: Path) -> dict[str, Any]:
    """The metadata of a Hugging Face card file (empty when there is none or it does not parse)."""
    from huggingface_hub import ModelCard

    if not readme.is_file():
        return {}
    try:
        return ModelCard.load(readme).data.to_dict()
    except Exception:  # a README that is not a card: no metadata to copy
        return {}


def model_info(spec: str, role: str) -> ModelInfo:
    """What the card says of one model: its Hub id (a Hub reference; a zoo member converted from a Hub checkpoint, by
    its ``homepage``) and license (its own card's ``license``, else its ``zoo.json``'s), each None when unknown."""
    folder = _folder_of(spec)
    if folder is None:
        name = spec.partition("@")[0]
        hub_id = name if _HUB_ID.match(name) and not spec.startswith(("zoo:", ".", "/", "~")) else None
        license_ = None
        if hub_id is not None:  # a card in the local HF cache, if the model was downloaded
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(hub_id, CARD_FILE)
            license_ = _card_metadata(Path(cached)).get("license") if isinstance(cached, str) else None
        return ModelInfo(role, spec, hub_id, _license_id(license_))
    zoo_card: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        zoo_card = json.loads((folder / "zoo.json").read_text())
    license_ = _card_metadata(folder / CARD_FILE).get("license") or zoo_card.get("license")
    url = _HUB_URL.match(str(zoo_card.get("homepage") or ""))
    return ModelInfo(role, spec, url.group(1) if url else None, _license_id(license_))


def _license_id(value: Any) -> str | None:
    """A license as the Hub writes it (``apache-2.0``), or None."""
    return value.strip().lower() if isinstance(value, str) and value.strip() else None


def models_of(card: dict[str, Any]) -> list[ModelInfo]:
    """The sources and the target of an artifact's ``fusebench.json`` card, described."""
    models = [model_info(spec, "source") for spec in card.get("sources") or []]
    if card.get("target"):
        models.append(model_info(card["target"], "target"))
    return models


def metadata(card: dict[str, Any], models: list[ModelInfo]) -> dict[str, Any]:
    """The card's YAML metadata (see the module docstring)."""
    fuser = str(card.get("fuser") or "")
    details = card.get("details") or {}
    tags = ["fusebench", "fusion", fuser]
    if fuser == "merge" or "mergekit_config" in details:
        tags += list(_MERGE_TAGS)
    meta: dict[str, Any] = {}
    hub_ids = list(dict.fromkeys(m.hub_id for m in models if m.hub_id))
    if hub_ids:
        meta["base_model"] = hub_ids
    meta["library_name"] = "transformers"
    licenses = {m.license for m in models}
    if len(licenses) == 1 and None not in licenses:
        meta["license"] = licenses.pop()
    meta["tags"] = list(dict.fromkeys(t for t in tags if t))
    return meta


def _fuser_lines(fuser: str) -> list[str]:
    """The method: the fuser's one-line description and its paper (when the fuser is installed here)."""
    from harness.registry import fusers

    cls = fusers().find(fuser)
    if cls is None:
        return [f"Fuser `{fuser}` (not installed where this card was written)."]
    summary = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
    lines = [f"**{fuser}**: {summary}" if summary else f"**{fuser}**"]
    if cls.paper:
        lines.append(f"Paper: <{cls.paper}>")
    return lines


def _yaml_block(data: Any) -> list[str]:
    """``data`` (YAML text, or a value dumped as YAML) in a fenced block that nothing inside it can close."""
    text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    return [f"{fence}yaml", text.rstrip("\n"), fence]


def _configuration(card: dict[str, Any]) -> list[str]:
    """The exact configuration: the fuser's arguments, then the mergekit config (the user's as given, else the one
    FuseBench ran)."""
    details = card.get("details") or {}
    given = {k: v for k, v in (card.get("config") or {}).items() if v is not None}
    if given.get("mergekit_config") is not None:  # the config says everything; the other settings are unused
        given = {"mergekit_config": given["mergekit_config"]}
    run = {"fuser": card.get("fuser"), "args": given, "sources": card.get("sources") or [],
           "target": card.get("target"), "seed": card.get("seed")}
    lines = ["FuseBench's fusion (`fusebench.json` in this folder has the full record):", "", *_yaml_block(run)]
    if details.get("mergekit_config_text"):
        source = details.get("mergekit_config_file") or "given inline"
        lines += ["", f"The mergekit config, as given ({source}):", "", *_yaml_block(details["mergekit_config_text"])]
    elif isinstance(details.get("mergekit_config"), dict):
        lines += ["", "The mergekit config FuseBench ran (model paths as they were on the machine that built it):", "",
                  *_yaml_block(details["mergekit_config"])]
    return lines


def render(card: dict[str, Any], *, title: str, scores: str | None = None) -> str:
    """The card's text: metadata, then the sections. ``scores``: the Markdown of the run's scores
    (:func:`scores_markdown`); None in an artifact's own card."""
    models = models_of(card)
    meta = metadata(card, models)
    provenance = card.get("provenance") or {}
    versions = provenance.get("versions") or {}
    made_with = ", ".join(f"{k} {versions[k]}" for k in ("fusebench", "transformers", "mergekit") if k in versions)
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).rstrip("\n"), "---", "", f"# {md.escape(title)}", "",
             f"A model fused from {len(models)} model(s) by FuseBench's {md.code(card.get('fuser'))} fuser "
             f"(fuse hash {md.code(card.get('fuse_hash'))}, seed {card.get('seed')}"
             + (f", built with {made_with}" if made_with else "") + ").", "", "## Method", "",
             *_fuser_lines(str(card.get("fuser"))), "", "## Models", "",
             "| role | model | on the Hub | license |", "|---|---|---|---|"]
    for m in models:
        lines.append(f"| {m.role} | {md.escape(m.spec)} | {md.escape(m.hub_id or '-')} | "
                     f"{md.escape(m.license or 'unknown')} |")
    if "license" not in meta:
        lines += ["", "No license in the metadata: not every model above declares one, or they differ. Check that "
                  "their terms allow this model and its use before you publish it."]
    lines += ["", "## Configuration", "", *_configuration(card), "", "## Scores", ""]
    lines += [scores] if scores else [
        "Not in this card: evaluations run after a model is built. `bench export RUN --out DIR` writes this card "
        "again with the scores of the run RUN (`bench runs` lists them), and `bench leaderboard` shows them."]
    lines += ["", "## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
              'model = AutoModelForCausalLM.from_pretrained("PATH_OR_REPO")',
              'tokenizer = AutoTokenizer.from_pretrained("PATH_OR_REPO")', "```", "",
              "FuseBench does not upload models; to publish this folder: "
              "`huggingface-cli upload YOUR_NAME/MODEL_NAME THIS_FOLDER`.", ""]
    return "\n".join(lines)


def write(folder: Path, card: dict[str, Any]) -> Path:
    """Write the artifact card of the fused model in ``folder`` (its ``fusebench.json`` record is ``card``)."""
    path = folder / CARD_FILE
    title = f"{card.get('fuser')}#{str(card.get('fuse_hash', ''))[:6]}"
    path.write_text(render(card, title=title), encoding="utf-8")
    return path


# --- the scores of a run ----------------------------------------------------------------------------


def scores_markdown(store: Store, run_id: str) -> str:
    """The scores of run ``run_id`` as a Markdown table: a row per member (fused first, then target and sources), a
    column per suite and summary task (each suite's primary metric), each value with its 95% interval."""
    from harness import leaderboard
    from harness.registry import run_caveats

    board = leaderboard.board(store, runs={run_id: run_id})
    if not board.rows:
        return "The run recorded no scores."
    headers = ["model", "role"] + [f"{c.suite}/{c.task} ({c.metric}, {'↑' if c.higher_is_better else '↓'})"
                                   for c in board.columns]
    lines = ["| " + " | ".join(md.escape(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    for row in board.rows:
        cells = []
        for column in board.columns:
            cell = board.cell(row, column)
            if cell is None:
                cells.append("-")
                continue
            half = cell.estimate.half_width(leaderboard.LEVEL)
            interval = f" [{cell.value - half:.4f}, {cell.value + half:.4f}]" if half is not None else ""
            cells.append(f"{cell.value:.4f}{interval}")
        lines.append("| " + " | ".join([md.escape(row.model), row.role, *cells]) + " |")
    config = store.run_configs([run_id]).get(run_id)
    notes = list(dict.fromkeys(line for suite in sorted({c.suite for c in board.columns})
                               for line in run_caveats(config, suite)))
    run = store.get_run(run_id)
    lines += ["", f"Run `{run_id}`" + (f" ({md.escape(run['name'])})" if run.get("name") else "")
              + f", {run.get('started_at')}: value [95% interval]; ↑ higher is better, ↓ lower is better."]
    lines += [f"\nnote: {md.escape(n)}" for n in notes]
    return "\n".join(lines)
