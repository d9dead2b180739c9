"""The zoo's skills: generated from one side of a fixed train/eval split, rendered exactly as the suites prompt."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from evals.bbh import MiniConfig, _write_tasks, mini_configs
from harness import skills, zoo
from harness.skills import bbh_items, functions


@pytest.mark.parametrize("task", sorted(bbh_items.GENERATORS))
def test_training_items_never_meet_what_bbh_mini_scores(task: str) -> None:
    scored = {i.input for seed in (0, 1, 2) for i in bbh_items.generate(task, 150, seed)}
    scored |= {e.input for e in bbh_items.exemplars(task)}
    trained = [i.input for i in itertools.islice(bbh_items.training_items(task, seed=0), 3000)]
    assert not scored & set(trained)
    assert all(skills.split_of(task, text) == "eval" for text in scored)
    assert all(skills.split_of(task, text) == "train" for text in trained)


def test_train_side_generation_matches_the_stream_side() -> None:
    items = bbh_items.generate("dyck_languages", 50, seed=0, split="train")
    assert all(skills.split_of("dyck_languages", i.input) == "train" for i in items)
    with pytest.raises(ValueError, match="split"):
        bbh_items.generate("dyck_languages", 5, seed=0, split="test")  # type: ignore[arg-type]


def test_function_problems_for_training_are_train_side_and_unscored() -> None:
    scored = {p.prompt for p in functions.generate(200, seed=0)}
    trained = [p.prompt for p in itertools.islice(functions.training_problems(seed=0), 2000)]
    assert not scored & set(trained)
    assert {p.family for p in itertools.islice(functions.training_problems(seed=0), 500)} == set(functions.FAMILIES)


def test_split_is_about_half_and_fixed() -> None:
    sides = [skills.split_of("navigate", f"item {i}") for i in range(4000)]
    assert 0.45 < sides.count("train") / len(sides) < 0.55
    assert skills.split_of("navigate", "item 7") == skills.split_of("navigate", "item 7")


def test_training_documents_are_solved_prompts_of_the_asked_skills() -> None:
    docs = list(itertools.islice(skills.training_documents(("dyck_languages", "humaneval_mini"), seed=3), 200))
    dyck_intro = bbh_items.fewshot_prompt("dyck_languages", [], None, "direct")
    dyck = [d for d in docs if d[0].startswith(dyck_intro)]
    code = [d for d in docs if d[0].startswith("def ")]
    assert dyck and code and len(dyck) + len(code) == len(docs)
    # pieces end where the suites' prompts end: a question's "A:", a function's docstring
    assert all(len(d) == 2 and d[0].endswith("\nA:") and d[1].startswith(" ") for d in dyck)
    assert all(len(d) % 2 == 0 and all(p.endswith('"""\n') for p in d[::2]) for d in code)
    assert all(body.startswith("    return ") for d in code for body in d[1::2])
    assert not any("Let's think step by step." in "".join(d) for d in docs)  # answer-only: see training_documents
    again = list(itertools.islice(skills.training_documents(("dyck_languages", "humaneval_mini"), seed=3), 200))
    assert docs == again
    with pytest.raises(ValueError, match="unknown skills"):
        next(skills.training_documents(("juggling",), seed=0))


@pytest.mark.parametrize("mode", ["direct", "cot"])
def test_the_zoo_trains_on_the_text_lm_eval_prompts_with(mode: str, tmp_path: Path) -> None:
    """A skill document is a suite prompt with answers: same description, question template and joins as the
    lm-eval task bbh-mini runs, so the experts learn the very format they are scored in."""
    from lm_eval.tasks import TaskManager, get_task_dict

    configs, names = mini_configs(MiniConfig(mode=mode, n_per_task=2), tmp_path)
    manager = TaskManager(include_path=str(_write_tasks(tmp_path, configs)), include_defaults=False)
    for lm_task, task in get_task_dict(list(names), manager).items():
        doc = task.eval_docs[0]
        ours = bbh_items.fewshot_prompt(names[lm_task], bbh_items.exemplars(names[lm_task]),
                                        bbh_items.generate(names[lm_task], 1, 0)[0], mode)
        assert task.fewshot_context(doc, num_fewshot=3) == ours, names[lm_task]


def test_every_expert_has_its_skill_and_the_base_none() -> None:
    for preset in zoo.PRESETS:
        for recipe in zoo.recipes(preset):
            if recipe.domain == "mix":
                assert recipe.skills == () and recipe.skill_share == 0
            else:
                assert recipe.skills == skills.ZOO_SKILLS[recipe.name] and 0 < recipe.skill_share < 1
    # one expert per family and domain, each with one skill of its domain's kind
    assert set(skills.ZOO_SKILLS) == {r.name for r in zoo.recipes() if r.domain != "mix"}
    taught = {s for group in skills.ZOO_SKILLS.values() for s in group}
    assert set(skills.held_out()) == set(skills.skill_names()) - taught
    assert "boolean_expressions" in skills.held_out()
