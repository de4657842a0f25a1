"""Write the faithfulness pairs that ship in config/datasets/ (written for llm-flow), keeping
only those SmolLM2-135M answers right (the answer's logit above the foil's).

    python -m benchmarks.make_pairs           # writes config/datasets/pairs_*.jsonl, prints a table

Three tasks, each from a few templates and word lists, drawn with a fixed seed:

* ``ioi``: indirect object. "When Mary and John went to the store, John gave a drink to" ->
  " Mary" (foil " John"); counterfactual: the same sentence with three other names ("ABC").
* ``capitals``: country -> capital. "The capital of France is" -> " Paris" (foil " Rome");
  counterfactual: the same sentence about the foil's country.
* ``years``: greater-than. "The war lasted from the year 1732 to the year 17" -> "4" (the
  decade after, foil "2": the decade before, impossible for an end year); counterfactual: the
  start year's decade set to 0 (1702), where both digits are possible and the copy "0"/"1" wins.

Every pair has clean and counterfactual prompts of the same token count, and one-token answer
and foil (checked here with SmolLM2's tokenizer). Each line: ``id``, ``task``, ``clean``,
``counterfactual``, ``answer``, ``foil``, and ``margin``, the clean logit difference answer - foil.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

DATASETS = Path(__file__).resolve().parent.parent / "config" / "datasets"
PER_TASK = 50  # pairs kept per task (the first that SmolLM2 answers right)
SEED = 0

NAMES = ["Mary", "John", "Tom", "James", "Anna", "David", "Sarah", "Michael", "Lisa", "Paul", "Emma", "Robert",
         "Laura", "Daniel", "Alice", "Mark", "Kate", "Peter", "Susan", "Jack", "Rachel", "Steven", "Linda",
         "George", "Emily", "Chris", "Helen", "Frank", "Julia", "Kevin"]  # fmt: skip
PLACES = ["store", "park", "school", "hospital", "restaurant", "station", "market", "library", "office", "beach"]
OBJECTS = ["drink", "book", "ring", "ball", "gift", "letter", "bag", "pen", "snack", "key"]
IOI_TEMPLATES = [  # {a} and {b} meet, {s} (= {b}) gives something to {a}
    "When {a} and {b} went to the {place}, {s} gave a {object} to",
    "After {a} and {b} went to the {place}, {s} gave a {object} to",
    "While {a} and {b} were working at the {place}, {s} gave a {object} to",
    "Then, {a} and {b} had a long talk at the {place}, and {s} handed a {object} to",
    "{a} and {b} went to the {place}. {s} gave a {object} to",
]
CAPITALS = {
    " France": " Paris", " Italy": " Rome", " Germany": " Berlin", " Spain": " Madrid", " Japan": " Tokyo",
    " Russia": " Moscow", " Egypt": " Cairo", " Greece": " Athens", " Austria": " Vienna", " Poland": " Warsaw",
    " Portugal": " Lisbon", " Ireland": " Dublin", " Norway": " Oslo", " Sweden": " Stockholm",
    " Denmark": " Copenhagen", " Finland": " Helsinki", " Hungary": " Budapest", " Kenya": " Nairobi",
    " Peru": " Lima", " Cuba": " Havana", " Thailand": " Bangkok", " China": " Beijing", " Turkey": " Ankara",
    " Iran": " Tehran", " Iraq": " Baghdad", " Syria": " Damascus", " Canada": " Ottawa", " Belgium": " Brussels",
    " Australia": " Canberra", " Vietnam": " Hanoi", " Indonesia": " Jakarta",
    " Lebanon": " Beirut", " Afghanistan": " Kabul", " Pakistan": " Islamabad",
    " Chile": " Santiago", " Colombia": " Bogota", " Venezuela": " Caracas", " Morocco": " Rabat",
}  # fmt: skip
CAPITAL_TEMPLATES = [
    "The capital of{x} is",
    "The capital city of{x} is",
    "In{x}, the capital city is",
    "Q: What is the capital of{x}?\nA:",
    "The government of{x} sits in the city of",
]
YEAR_TEMPLATES = [
    "The war lasted from the year {start} to the year {century}",
    "The expedition lasted from the year {start} to the year {century}",
    "The king ruled from {start} until {century}",
    "The company was active from {start} to {century}",
    "The bridge was built between {start} and {century}",
]


def ioi_candidates(rng: random.Random):
    while True:
        a, b, c, d, e = rng.sample(NAMES, 5)
        template = rng.choice(IOI_TEMPLATES)
        words = dict(place=rng.choice(PLACES), object=rng.choice(OBJECTS))
        yield template.format(a=a, b=b, s=b, **words), template.format(a=c, b=d, s=e, **words), f" {a}", f" {b}"


def capital_candidates(rng: random.Random):
    countries = list(CAPITALS)
    while True:
        x, y = rng.sample(countries, 2)
        template = rng.choice(CAPITAL_TEMPLATES)
        yield template.format(x=x), template.format(x=y), CAPITALS[x], CAPITALS[y]


def year_candidates(rng: random.Random):
    while True:
        century, decade, unit = rng.choice(["15", "16", "17", "18", "19"]), rng.randint(2, 8), rng.randint(1, 9)
        template = rng.choice(YEAR_TEMPLATES)
        clean = template.format(start=f"{century}{decade}{unit}", century=century)
        counterfactual = template.format(start=f"{century}0{unit}", century=century)
        yield clean, counterfactual, str(decade + 1), str(decade - 1)


TASKS = {"ioi": ioi_candidates, "capitals": capital_candidates, "years": year_candidates}


def make(model, task: str, per_task: int = PER_TASK, max_tries: int = 2000) -> tuple[list[dict], int]:
    """The first `per_task` distinct candidates that pass the checks, and how many were tried."""
    import torch

    tokenizer = model.tokenizer
    kept, seen, tried = [], set(), 0
    for clean, counterfactual, answer, foil in TASKS[task](random.Random(SEED)):
        if len(kept) == per_task or tried == max_tries:
            break
        if clean in seen:
            continue
        seen.add(clean)
        tried += 1
        ids = model.encode(clean)
        one_token = [len(tokenizer(w, add_special_tokens=False)["input_ids"]) == 1 for w in (answer, foil)]
        if len(ids) != len(model.encode(counterfactual)) or not all(one_token):
            continue
        answer_id, foil_id = (tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in (answer, foil))
        with torch.no_grad():
            logits = model.hf_model(torch.tensor([ids])).logits[0, -1].float()
        margin = float(logits[answer_id] - logits[foil_id])
        if margin > 0:
            kept.append({"id": f"{task}-{len(kept) + 1:02d}", "task": task, "clean": clean,
                         "counterfactual": counterfactual, "answer": answer, "foil": foil,
                         "margin": round(margin, 3)})  # fmt: skip
    return kept, tried


def main() -> None:
    import torch

    import llm_flow

    torch.set_num_threads(1)
    model = llm_flow.load_model("smollm2-135m")
    print(f"{'task':<10} {'tried':>6} {'kept':>5} {'tokens':>8}  file")
    for task in TASKS:
        pairs, tried = make(model, task)
        path = DATASETS / f"pairs_{task}.jsonl"
        path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
        lengths = sorted(len(model.encode(p["clean"])) for p in pairs)
        print(f"{task:<10} {tried:>6} {len(pairs):>5} {lengths[0]:>3}..{lengths[-1]:<3}  {path.relative_to(DATASETS.parent.parent)}")


if __name__ == "__main__":
    main()
