"""Data diff between two constructed versions of a dataset: added, removed and changed examples by
content fingerprint (whatever their lines), and validation problems new in the second version."""

from __future__ import annotations

import json

from honing.lifecycle.datadiff import diff_data

SYSTEM = "Name the animal's class: one of bird, fish, mammal."


def rec(question: str, answer: str, system: bool = True) -> str:
    msgs = ([{"role": "system", "content": SYSTEM}] if system else []) + [
        {"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return json.dumps({"messages": msgs})


ANIMALS = [("dog", "mammal"), ("cat", "mammal"), ("horse", "mammal"), ("eagle", "bird"), ("owl", "bird"),
           ("swan", "bird"), ("salmon", "fish"), ("trout", "fish"), ("shark", "fish"), ("cod", "fish")]


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_added_removed_changed_by_fingerprint_and_new_problems(tmp_path):
    v1 = [rec(f"What is a {a}?", c) for a, c in ANIMALS]
    v1[3] = rec("What is a eagle?", "fish")  # a wrong label in version 1 (line 4)
    v1.append(rec("What is a bat?", "bird"))  # wrong too (line 11)
    old = write(tmp_path / "v1.jsonl", v1)

    v2 = [rec(f"What is a {a}?", c) for a, c in ANIMALS if a != "cod"]  # cod removed; eagle corrected
    v2.reverse()  # order (and so every line number) changes: the diff must not care
    v2 += [rec("What is a bat?", "mammal"),            # corrected
           rec("What is a penguin?", "bird"),          # added
           rec("What is a whale?", "mammal"),          # added
           rec("What is a whale?", "mammal"),          # added again: an exact duplicate (new problem)
           '{"messages": [{"role": "user", "content": "What is a crow?"}',  # cut-off JSON (new problem)
           ]
    new = write(tmp_path / "v2.jsonl", v2)

    d = diff_data(old, new)
    assert (d.old_examples, d.new_examples) == (11, 13)  # the broken line is not an example
    assert d.counts == {"added": 3, "removed": 1, "changed": 2}
    assert d.unchanged == 8
    assert [(x["prompt"], x["answer"], x["line"]) for x in d.removed] == [("What is a cod?", "fish", 10)]
    assert sorted((x["prompt"], x["answer"]) for x in d.added) == [
        ("What is a penguin?", "bird"), ("What is a whale?", "mammal"), ("What is a whale?", "mammal")]
    changed = sorted((x["prompt"], x["old_answer"], x["new_answer"], x["old_line"]) for x in d.changed)
    assert changed == [("What is a bat?", "bird", "mammal", 11), ("What is a eagle?", "fish", "bird", 4)]
    assert sorted(d.answer_changes) == [("bird", "mammal", 1), ("fish", "bird", 1)]

    cats = sorted((p["category"], p["line"]) for p in d.new_problems)
    assert cats == [("duplicate", 13), ("invalid_json", 14)]
    assert not d.identical and d.old_sha256 != d.new_sha256
    assert "3 added, 1 removed, 2 changed, 8 unchanged" in d.summary()
    j = d.to_dict()
    assert j["added"] == 3 and j["old"]["examples"] == 11 and len(j["changed_examples"]) == 2


def test_problems_of_the_old_version_are_not_new_and_fixed_ones_are_counted(tmp_path):
    base = [rec(f"What is a {a}?", c) for a, c in ANIMALS]
    old = write(tmp_path / "old.jsonl", base + [base[0]])  # line 11 duplicates line 1
    d = diff_data(old, write(tmp_path / "same_problem.jsonl", [base[0]] + base))  # duplicate moves to line 2
    assert d.new_problems == [] and d.fixed_problems == 0
    assert d.counts == {"added": 0, "removed": 0, "changed": 0} and d.unchanged == 11

    d = diff_data(old, write(tmp_path / "fixed.jsonl", base))
    assert d.new_problems == [] and d.fixed_problems == 1
    assert d.counts["removed"] == 1


def test_a_system_prompt_change_is_a_change_of_every_example_not_an_add_and_remove(tmp_path):
    """The prompt fingerprint leaves the (shared) system prompt out, so rewording it pairs each example
    with its old version."""
    old = write(tmp_path / "a.jsonl", [rec(f"What is a {a}?", c) for a, c in ANIMALS])
    new = write(tmp_path / "b.jsonl", [rec(f"What is a {a}?", c, system=False) for a, c in ANIMALS])
    d = diff_data(old, new)
    assert d.counts == {"added": 0, "removed": 0, "changed": 10} and d.unchanged == 0
    assert d.answer_changes == []  # only the system prompt changed


def test_walkthrough_data_is_reproducible_and_diffs_as_documented():
    """examples/maintenance: the build script reproduces data/ byte for byte, and v1 -> v2 is 80 examples
    added and the 15 wrong labels corrected (docs/maintenance.md shows this diff)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "examples" / "maintenance"
    p = subprocess.run([sys.executable, str(root / "build_data.py"), "--check"], capture_output=True, text=True,
                       check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    d = diff_data(root / "data" / "v1.jsonl", root / "data" / "v2.jsonl")
    assert (d.old_examples, d.new_examples) == (100, 180)
    assert d.counts == {"added": 80, "removed": 0, "changed": 15} and d.unchanged == 85
    assert sum(n for _, _, n in d.answer_changes) == 15 and d.new_problems == []
