"""The answer metrics notebook 05 reports (no model needed)."""

from utils.data import Example
from utils.inference import normalize, right_form, script, split_by_answer, spread


def ex(question, answer):
    return Example(messages=[{"role": "user", "content": question}, {"role": "assistant", "content": answer}])


def test_script_tells_korean_english_mixed_and_other():
    assert [script(t) for t in ("거푸집", "formwork", "거푸집 formwork", "4.8 m³"[:3], "7개")] == \
        ["ko", "en", "mixed", "other", "ko"]


def test_right_form_wants_the_language_a_short_answer_and_a_stop():
    assert right_form("거푸집 해체", "거푸집", stopped=True)  # wrong term, right form
    assert not right_form("거푸집", "거푸집", stopped=False)  # ran on to max_new_tokens
    assert not right_form("formwork", "거푸집", stopped=True)  # wrong language
    assert not right_form("", "formwork", stopped=True)
    assert not right_form("formwork is a temporary mould that holds fresh concrete", "formwork", stopped=True)
    assert right_form("A hard hat", "A hard hat.", stopped=True)


def test_split_by_answer_groups_held_out_rows_by_whether_training_had_their_answer():
    train = [ex("Translate: 거푸집", "formwork"), ex("Translate: formwork", "거푸집")]
    held_out = [ex("다음 건설 용어를 영어로 번역하세요.\n\n거푸집", "Formwork."), ex("Translate: 코킹", "caulking")]
    groups = split_by_answer(held_out, train)
    assert [e.answer for e in groups["seen answer"]] == ["Formwork."]  # normalized: case and full stop
    assert [e.answer for e in groups["new answer"]] == ["caulking"]
    assert normalize(groups["seen answer"][0].answer) == "formwork"


def test_spread_covers_the_whole_list_deterministically():
    assert spread(list(range(10)), 4) == [0, 2, 5, 7]
    assert spread(list(range(3)), 8) == [0, 1, 2]
    assert spread(list(range(48)), 12) == list(range(0, 48, 4))
