"""Seeded generators for BBH's algorithmic tasks (the offline ``bbh-mini`` suite, and the zoo's skills).

Each generator returns items in exactly BBH's format — ``{"input": str, "target": str}`` with BBH's
phrasing and answer conventions — plus a worked chain-of-thought ending in "So the answer is X." used
for FuseBench's own few-shot exemplars. The items are generated, never copied from BBH, and the
suite is stored under its own name so its scores are never mistaken for real BBH.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.skills import SPLITS, Split, split_of


@dataclass(frozen=True)
class Item:
    input: str
    target: str
    reasoning: str  # the worked steps, without the final "So the answer is ..." sentence

    def cot_target(self) -> str:
        return f"{self.reasoning} So the answer is {self.target}."

    def as_row(self) -> dict[str, str]:
        return {"input": self.input, "target": self.target}


# --- boolean_expressions ------------------------------------------------------------------------


def boolean_expressions(rng: random.Random) -> Item:
    """``not ( True ) and ( True ) is`` -> ``False``: five operands/operators like BBH's."""
    def atom() -> str:
        return " ".join(["not"] * rng.choice([0, 0, 1, 2]) + [rng.choice(["True", "False"])])

    def group() -> str:
        inner = atom() if rng.random() < 0.6 else f"{atom()} {rng.choice(['and', 'or'])} {atom()}"
        return f"( {inner} )" if rng.random() < 0.5 else inner

    expr = group() if rng.random() < 0.3 else f"{group()} {rng.choice(['and', 'or'])} {group()}"
    value = eval(expr)  # only True/False/not/and/or/parentheses, built above
    steps = f"Python evaluates not before and before or: {expr} = {value}."
    return Item(f"{expr} is", str(value), steps)


# --- multistep_arithmetic_two -------------------------------------------------------------------


def multistep_arithmetic_two(rng: random.Random) -> Item:
    """``((-1 + 2 + 9 * 5) - (-2 + -4 + -4 * -7)) =`` -> ``24``: two groups of four one-digit numbers."""
    def group() -> str:
        nums = [str(rng.randint(-9, 9)) for _ in range(4)]
        ops = [rng.choice(["+", "-", "*"]) for _ in range(3)]
        return " ".join(x for pair in zip(nums, ops + [""], strict=True) for x in pair if x)

    a, b = group(), group()
    op = rng.choice(["+", "-", "*"])
    va, vb = eval(a), eval(b)  # integers and + - * only
    value = eval(f"({va}) {op} ({vb})")
    steps = f"Let A = {a} = {va} and B = {b} = {vb}. Then (A) {op} (B) = ({va}) {op} ({vb}) = {value}."
    return Item(f"(({a}) {op} ({b})) =", str(value), steps)


# --- dyck_languages -----------------------------------------------------------------------------

_PAIRS = {"(": ")", "[": "]", "{": "}", "<": ">"}


def dyck_languages(rng: random.Random) -> Item:
    """Complete a bracket sequence so that every opened bracket is closed."""
    stack: list[str] = []
    seq: list[str] = []
    for _ in range(rng.randint(3, 10)):
        if stack and rng.random() < 0.4:
            seq.append(_PAIRS[stack.pop()])
        else:
            opener = rng.choice(list(_PAIRS))
            stack.append(opener)
            seq.append(opener)
    if not stack:  # always leave something to close
        stack.append(rng.choice(list(_PAIRS)))
        seq.append(stack[-1])
    closing = [_PAIRS[o] for o in reversed(stack)]
    steps = f"The brackets still open, from the innermost, are {' '.join(reversed(stack))}; we close each in turn."
    text = "Complete the rest of the sequence, making sure that the parentheses are closed properly. Input: "
    return Item(text + " ".join(seq), " ".join(closing), steps)


# --- word_sorting -------------------------------------------------------------------------------

_WORDS = (
    "anchor basket cobalt dune ember falcon garnet harbor island jungle kettle lantern meadow nectar orbit "
    "pepper quartz raven saddle timber umbra velvet willow xenon yonder zephyr acorn bramble cinder delta "
    "echo fable glacier hollow ivory jasper kernel lotus marble nimbus oyster pebble quiver ripple summit "
    "thistle unison vortex walnut yarrow zenith apricot beacon canyon drift estuary fjord grove heron"
).split()


def word_sorting(rng: random.Random) -> Item:
    words = rng.sample(_WORDS, rng.randint(2, 4))
    ordered = sorted(words)
    steps = f"The first letters in order give: {', '.join(ordered)}."
    return Item("Sort the following words alphabetically: List: " + " ".join(words), " ".join(ordered), steps)


# --- object_counting ----------------------------------------------------------------------------

_KINDS = {
    "fruits": ["apple", "banana", "plum", "peach", "orange", "grape", "strawberry", "nectarine"],
    "vegetables": ["carrot", "onion", "potato", "cabbage", "yam", "garlic", "lettuce head", "stalk of celery"],
    "musical instruments": ["flute", "piano", "violin", "drum", "trumpet", "clarinet", "accordion", "trombone"],
    "animals": ["cat", "dog", "goat", "rabbit", "snail", "frog", "donkey", "duck"],
}
_NUMBER_WORDS = {1: "a", 2: "two", 3: "three", 4: "four", 5: "five"}


def _plural(noun: str) -> str:
    if noun == "stalk of celery":
        return "stalks of celery"
    if noun.endswith(("ch", "sh", "o")):
        return noun + "es"
    return noun + "s"


def _article(noun: str) -> str:
    return "an" if noun[0] in "aeiou" else "a"


def object_counting(rng: random.Random) -> Item:
    category = rng.choice(list(_KINDS))
    others = [n for k, v in _KINDS.items() if k != category for n in v]
    chosen = rng.sample(_KINDS[category], rng.randint(2, 4)) + rng.sample(others, rng.randint(0, 2))
    rng.shuffle(chosen)
    counts = {noun: rng.choice([1, 1, 1, 2, 3]) for noun in chosen}
    phrases = [f"{_article(n)} {n}" if c == 1 else f"{_NUMBER_WORDS[c]} {_plural(n)}" for n, c in counts.items()]
    listing = ", ".join(phrases[:-1]) + f", and {phrases[-1]}" if len(phrases) > 1 else phrases[0]
    relevant = [(n, c) for n, c in counts.items() if n in _KINDS[category]]
    total = sum(c for _, c in relevant)
    steps = "Counting only the " + category + ": " + " + ".join(f"{c} ({n})" for n, c in relevant) + f" = {total}."
    return Item(f"I have {listing}. How many {category} do I have?", str(total), steps)


# --- navigate -----------------------------------------------------------------------------------


def navigate(rng: random.Random) -> Item:
    moves = {"forward": (0, 1), "backward": (0, -1), "left": (-1, 0), "right": (1, 0)}
    x = y = 0
    parts = []
    for _ in range(rng.randint(3, 8)):
        direction = rng.choice(list(moves))
        steps = rng.randint(1, 10)
        dx, dy = moves[direction]
        x, y = x + dx * steps, y + dy * steps
        parts.append(f"Take {steps} step{'s' if steps > 1 else ''} {direction}.")
    if rng.random() < 0.5:  # make about half of them return home
        for axis_value, (neg, pos) in ((x, ("left", "right")), (y, ("backward", "forward"))):
            if axis_value:
                d = neg if axis_value > 0 else pos
                parts.append(f"Take {abs(axis_value)} step{'s' if abs(axis_value) > 1 else ''} {d}.")
        x = y = 0
    answer = "Yes" if (x, y) == (0, 0) else "No"
    text = ("If you follow these instructions, do you return to the starting point? Always face forward. "
            + " ".join(parts) + "\nOptions:\n- Yes\n- No")
    return Item(text, answer, f"Adding up the steps, we end at ({x}, {y}).")


# --- web_of_lies --------------------------------------------------------------------------------

_NAMES = ("Ada Bruno Cleo Dario Elin Farid Greta Hugo Ines Jonas Kaia Luis Mira Nils Oona Pavel Rhea Soren "
          "Tove Umar Vera Wendel Xenia Yusuf Zora").split()


def web_of_lies(rng: random.Random) -> Item:
    people = rng.sample(_NAMES, 5)
    truthful = rng.random() < 0.5
    sentences = [f"{people[0]} {'tells the truth' if truthful else 'lies'}."]
    reasoning = [f"{people[0]} {'tells the truth' if truthful else 'lies'}."]
    for prev, person in zip(people, people[1:], strict=False):
        claims_truth = rng.random() < 0.5
        sentences.append(f"{person} says {prev} {'tells the truth' if claims_truth else 'lies'}.")
        truthful = claims_truth == truthful
        reasoning.append(f"So {person} {'tells the truth' if truthful else 'lies'}.")
    text = "Question: " + " ".join(sentences) + f" Does {people[-1]} tell the truth?"
    return Item(text, "Yes" if truthful else "No", " ".join(reasoning))


# --- hyperbaton ----------------------------------------------------------------------------------

#: English's order of adjective kinds before a noun, with a few adjectives of each kind
_ADJECTIVE_KINDS = (
    ("opinion", ("lovely", "terrible", "nice", "awful", "wonderful", "silly", "obnoxious", "good")),
    ("size", ("big", "small", "tiny", "enormous", "huge", "little", "large", "massive")),
    ("age", ("old", "new", "ancient", "brand-new", "old-fashioned", "young")),
    ("shape", ("square", "circular", "triangular", "rectangular", "spherical", "prismlike")),
    ("color", ("red", "blue", "green", "gray", "white", "black", "yellow", "purple")),
    ("origin", ("Japanese", "Brazilian", "Mexican", "Egyptian", "Turkish", "Iranian", "Chinese", "German")),
    ("material", ("wool", "plastic", "paper", "glass", "steel", "leather", "cloth", "rubber")),
    ("purpose", ("drinking", "walking", "hiking", "smoking", "eating", "exercise", "typing", "snorkeling")),
)
_NOUNS = ("ship", "knife", "sweater", "car", "match", "shoe", "bag", "box", "watch", "chair", "spoon", "cup",
          "lamp", "table", "rug", "dog", "cat", "house", "book", "bottle")


def hyperbaton(rng: random.Random) -> Item:
    """``Which sentence has the correct adjective order: Options: (A) rubber terrible ship (B) terrible rubber
    ship`` -> ``(B)``: two adjectives of different kinds (BBH has up to five), one option in English order."""
    kinds = sorted(rng.sample(range(len(_ADJECTIVE_KINDS)), 2))
    adjectives = [rng.choice(_ADJECTIVE_KINDS[k][1]) for k in kinds]
    noun = rng.choice(_NOUNS)
    right, wrong = " ".join([*adjectives, noun]), " ".join([*reversed(adjectives), noun])
    correct_first = rng.random() < 0.5
    options = (right, wrong) if correct_first else (wrong, right)
    text = f"Which sentence has the correct adjective order:\nOptions:\n(A) {options[0]}\n(B) {options[1]}"
    names = [_ADJECTIVE_KINDS[k][0] for k in kinds]
    steps = (f"{adjectives[0]} is {names[0]} and {adjectives[1]} is {names[1]}; "
             f"{names[0]} comes before {names[1]}, so the right order is {right}.")
    return Item(text, "(A)" if correct_first else "(B)", steps)


GENERATORS: dict[str, Callable[[random.Random], Item]] = {
    "boolean_expressions": boolean_expressions,
    "multistep_arithmetic_two": multistep_arithmetic_two,
    "dyck_languages": dyck_languages,
    "word_sorting": word_sorting,
    "object_counting": object_counting,
    "navigate": navigate,
    "web_of_lies": web_of_lies,
    "hyperbaton": hyperbaton,
}


_EXEMPLAR_SEED = -1


def generate(task: str, n: int, seed: int, split: Split = "eval") -> list[Item]:
    """``n`` distinct items of ``task`` from one side of the train/eval split (:func:`harness.skills.split_of`);
    the same (task, n, seed, split) always gives the same list.

    Test items never repeat a few-shot exemplar (small tasks such as boolean_expressions would
    otherwise collide by chance); training items cannot meet either, being on the other side.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    rng = random.Random(f"bbh-mini/{task}/{seed}" if split == "eval" else f"bbh-mini/{task}/train/{seed}")
    items: list[Item] = []
    seen = set() if seed == _EXEMPLAR_SEED or split == "train" else {e.input for e in exemplars(task)}
    tries = 0
    while len(items) < n:
        item = GENERATORS[task](rng)
        tries += 1
        if item.input not in seen and split_of(task, item.input) == split:
            seen.add(item.input)
            items.append(item)
        elif tries > 200 * (n + 10):
            raise ValueError(f"{task} has fewer than {n} distinct {split} items")
    return items


def exemplars(task: str, k: int = 3) -> list[Item]:
    """Few-shot exemplars: eval-side items from a seed the test items never use."""
    return generate(task, k, seed=_EXEMPLAR_SEED)


# --- the prompt format: lm-eval's BBH task definitions ----------------------------------------------

_BUILTIN_DIR = {"cot": "cot_fewshot", "direct": "fewshot"}
#: lm-eval's joins: between exemplars, and between an exemplar's question and its target (direct: lm-eval's
#: default " "; cot: the builtin task's ``target_delimiter: ""``, its question already ends in a newline).
FEWSHOT_DELIMITER = "\n\n"
TARGET_DELIMITER = {"direct": " ", "cot": ""}


def lm_eval_bbh_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent / "bbh"


def builtin_yaml(task: str, mode: str) -> Path:
    """lm-eval's task definition of BBH ``task`` in ``mode`` (``cot`` or ``direct``)."""
    return lm_eval_bbh_dir() / _BUILTIN_DIR[mode] / f"{task}.yaml"


@functools.cache
def _builtin(task: str, mode: str) -> tuple[str, str]:
    """(description, question template) of lm-eval's builtin task; the template's one field is ``{{input}}``."""
    import yaml

    spec = yaml.safe_load(builtin_yaml(task, mode).read_text(encoding="utf-8"))
    template = spec["doc_to_text"]
    if template.replace("{{input}}", "").count("{{"):
        raise ValueError(f"lm-eval's {task} ({mode}) prompt has fields besides input: {template!r}")
    return spec.get("description", ""), template


def question(task: str, item: Item, mode: str) -> str:
    """The question as lm-eval's builtin task writes it (``Q: ...\\nA:``, plus the CoT opener in ``cot``)."""
    return _builtin(task, mode)[1].replace("{{input}}", item.input)


def answer(item: Item, mode: str) -> str:
    """What an exemplar shows after its question: the target (direct) or the worked steps and the target (cot)."""
    return TARGET_DELIMITER[mode] + (item.target if mode == "direct" else item.cot_target())


def fewshot_prompt(task: str, shots: Sequence[Item], item: Item | None, mode: str) -> str:
    """The text lm-eval puts before a model's answer: description, solved exemplars, then ``item``'s question
    (none: just the solved exemplars, which is how the zoo's skill documents read)."""
    parts = [question(task, s, mode) + answer(s, mode) for s in shots]
    if item is not None:
        parts.append(question(task, item, mode))
    return _builtin(task, mode)[0] + FEWSHOT_DELIMITER.join(parts)


def training_items(task: str, seed: int) -> Iterator[Item]:
    """An endless stream of ``task`` items from the train side of the split (repeats possible on small tasks)."""
    rng = random.Random(f"bbh-mini/{task}/train-stream/{seed}")
    while True:
        item = GENERATORS[task](rng)
        if split_of(task, item.input) == "train":
            yield item
