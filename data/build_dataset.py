"""Build the sample construction-terminology data set (deterministic).

Run from the repo root or from data/:  python data/build_dataset.py
Writes construction_{train,eval}.jsonl, images/*.png, pretrain_corpus.txt and
examples/{broken,chat_format}.jsonl next to this file. Stdlib + Pillow only.
"""
import json
import math
import random
import shutil
import sys
from collections import Counter
from decimal import Decimal as D
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from glossary import EVAL_TERMS, GLOSSARY  # noqa: E402

SEED = 1234
SIZE = 224
IMG_DIR = HERE / "images"

# ---------------------------------------------------------------- text rows
INSTR = {
    "def_en": ["Define the construction term.",
               "What does this construction term mean?",
               "Give a one-sentence definition of this construction term."],
    "def_ko": ["다음 건설 용어의 뜻을 설명하세요.",
               "이 건설 용어는 무엇을 의미합니까?"],
    "ko2en": ["Translate this Korean construction term into English.",
              "다음 건설 용어를 영어로 번역하세요."],
    "en2ko": ["Translate this English construction term into Korean.",
              "다음 건설 용어를 한국어로 번역하세요."],
}


def row(kind, instruction, inp, output, **extra):
    r = {"instruction": instruction, "input": inp, "output": output, **extra}
    r["_kind"] = kind  # internal, stripped before writing
    return r


def term_rows(rng, t):
    return [
        row("def_en", rng.choice(INSTR["def_en"]), t["en"], t["def_en"]),
        row("def_ko", rng.choice(INSTR["def_ko"]), t["ko"], t["def_ko"]),
        row("ko2en", rng.choice(INSTR["ko2en"]), t["ko"], t["en"]),
        row("en2ko", rng.choice(INSTR["en2ko"]), t["en"], t["ko"]),
    ]


def num(x):
    """Decimal -> plain string without trailing zeros ('4.80' -> '4.8')."""
    s = format(x.quantize(D("0.01")).normalize(), "f")
    return s


def site_task(rng):
    """One short calculation with an exact answer computed here."""
    k = rng.choice(["slab", "slab_ko", "area", "mm2m", "scale", "trucks"])
    if k in ("slab", "slab_ko"):
        l, w = D(rng.randint(3, 12)), D(rng.randint(2, 8))
        t = D(rng.choice(["0.15", "0.18", "0.2", "0.25", "0.3"]))
        v = num(l * w * t)
        if k == "slab":
            q = f"A slab is {l} m x {w} m x {t} m. How many cubic metres of concrete?"
        else:
            q = f"가로 {l} m, 세로 {w} m, 두께 {t} m인 슬래브의 콘크리트량은 몇 m³입니까?"
        return row("site_task", q, "", f"{v} m³")
    if k == "area":
        a, b = D(rng.randint(24, 90)) / 10, D(rng.randint(24, 90)) / 10
        return row("site_task", f"A room measures {num(a)} m by {num(b)} m. What is its floor area?",
                   "", f"{num(a * b)} m²")
    if k == "mm2m":
        mm = rng.randint(6, 120) * 50
        return row("site_task", "Convert this length from millimetres to metres.",
                   f"{mm} mm", f"{num(D(mm) / 1000)} m")
    if k == "scale":
        s = rng.choice([50, 100, 200])
        mm = rng.randint(10, 90)
        return row("site_task",
                   f"On a 1:{s} drawing a wall measures {mm} mm. What is its real length in metres?",
                   "", f"{num(D(mm) * s / 1000)} m")
    vol = rng.randint(8, 60)
    cap = rng.choice([6, 7, 8])
    return row("site_task",
               f"A pour needs {vol} m³ of concrete and each truck carries {cap} m³. "
               "How many truckloads are needed?", "", str(math.ceil(vol / cap)))


def unique_tasks(rng, n, seen):
    out = []
    while len(out) < n:
        r = site_task(rng)
        key = (r["instruction"], r["input"])
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


# ------------------------------------------------------------------ drawing
def font(size):
    return ImageFont.load_default(size=size)


def canvas():
    img = Image.new("RGB", (SIZE, SIZE), "white")
    return img, ImageDraw.Draw(img)


SIGNS = [  # (style, text lines, english answer, korean answer)
    ("must", ["HARD HAT", "REQUIRED"], "A hard hat.", "안전모"),
    ("must", ["SAFETY HARNESS", "REQUIRED"], "A safety harness.", "안전대"),
    ("must", ["SAFETY BOOTS", "REQUIRED"], "Safety boots.", "안전화"),
    ("must", ["EYE PROTECTION", "REQUIRED"], "Eye protection.", "보안경"),
    ("must", ["HEARING", "PROTECTION", "REQUIRED"], "Hearing protection.", "청력 보호구"),
    ("must", ["HI-VIS VEST", "REQUIRED"], "A high-visibility vest.", "안전 조끼"),
    ("no", ["NO SMOKING"], "Smoking.", "흡연"),
    ("no", ["NO ENTRY"], "Entry.", "출입"),
    ("warn", ["DANGER", "HIGH VOLTAGE"], "High voltage.", "고전압"),
    ("warn", ["CAUTION", "FALLING OBJECTS"], "Falling objects.", "낙하물"),
]


def draw_sign(rng, path):
    style, lines, ans_en, ans_ko = rng.choice(SIGNS)
    img, d = canvas()
    cx, cy, r = 112, 78, 58
    if style == "must":  # blue mandatory disc
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(0, 82, 164))
        d.ellipse([cx - 14, cy - 40, cx + 14, cy - 12], fill="white")  # head
        d.rectangle([cx - 22, cy - 8, cx + 22, cy + 36], fill="white")  # body
    elif style == "no":  # red prohibition ring with slash
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=(200, 16, 46), width=12)
        d.line([cx - 40, cy - 40, cx + 40, cy + 40], fill=(200, 16, 46), width=12)
    else:  # yellow warning triangle
        d.polygon([(cx, cy - r), (cx - r - 8, cy + r - 6), (cx + r + 8, cy + r - 6)],
                  fill=(255, 204, 0), outline="black", width=5)
        d.text((cx, cy + 12), "!", fill="black", font=font(56), anchor="mm")
    f = font(rng.choice([17, 18, 19]))
    y = 152
    for ln in lines:
        d.text((112, y), ln, fill="black", font=f, anchor="mm")
        y += 22
    img.save(path)
    if style == "must":
        q = [("What does this safety sign require?", ans_en),
             ("이 안전 표지는 무엇을 착용하라고 요구합니까?", ans_ko)]
    elif style == "no":
        q = [("What does this safety sign prohibit?", ans_en),
             ("이 안전 표지는 무엇을 금지합니까?", ans_ko)]
    else:
        q = [("What hazard does this safety sign warn about?", ans_en),
             ("이 안전 표지는 어떤 위험을 경고합니까?", ans_ko)]
    return rng.choice(q)


def dim_h(d, x0, x1, y, label, f):
    """Horizontal dimension line with end ticks and a centred label above."""
    d.line([x0, y, x1, y], fill="black", width=1)
    for x in (x0, x1):
        d.line([x, y - 5, x, y + 5], fill="black", width=1)
    d.text(((x0 + x1) // 2, y - 3), label, fill="black", font=f, anchor="mb")


def dim_v(d, x, y0, y1, label, f):
    d.line([x, y0, x, y1], fill="black", width=1)
    for y in (y0, y1):
        d.line([x - 5, y, x + 5, y], fill="black", width=1)
    d.text((x - 4, (y0 + y1) // 2), label, fill="black", font=f, anchor="rm")


def draw_plan(rng, path):
    w, h = rng.randint(8, 20) * 300, rng.randint(8, 20) * 300  # mm
    s = 140 / max(w, h)  # px per mm
    pw, ph = round(w * s), round(h * s)
    x0, y0 = 62, 40 + (140 - ph) // 2
    img, d = canvas()
    f = font(12)
    d.rectangle([x0, y0, x0 + pw, y0 + ph], outline="black", width=4)
    d.text((x0 + pw // 2, y0 + ph // 2), "ROOM", fill="black", font=f, anchor="mm")
    dim_h(d, x0, x0 + pw, y0 - 12, str(w), f)
    dim_v(d, x0 - 12, y0, y0 + ph, str(h), f)
    d.text((112, 212), "UNITS: mm", fill="black", font=f, anchor="mm")
    img.save(path)
    area = num(D(w) * D(h) / 1_000_000)
    return rng.choice([
        ("What is the width of the room in millimetres?", f"{w} mm"),
        ("What is the depth of the room (vertical dimension) in millimetres?", f"{h} mm"),
        ("이 방의 가로 길이는 몇 mm입니까?", f"{w} mm"),
        ("What is the floor area of this room in square metres?", f"{area} m²"),
    ])


def draw_section(rng, path):
    bottom, top = rng.randint(2, 5), rng.randint(2, 4)
    img, d = canvas()
    x0, y0, x1, y1 = 37, 32, 187, 192
    d.rectangle([x0, y0, x1, y1], fill=(200, 200, 200), outline="black", width=2)
    d.rectangle([x0 + 12, y0 + 12, x1 - 12, y1 - 12], outline="black", width=2)  # stirrup
    r = 6
    for n, y in ((bottom, y1 - 24), (top, y0 + 24)):
        for i in range(n):
            x = x0 + 24 + i * (x1 - x0 - 48) / (n - 1)
            d.ellipse([x - r, y - r, x + r, y + r], fill="black")
    img.save(path)
    total = bottom + top
    return rng.choice([
        ("How many rebars are in this cross-section?", str(total)),
        ("이 보 단면에 있는 철근은 모두 몇 개입니까?", f"{total}개"),
        ("How many rebars are in the bottom layer of this beam section?", str(bottom)),
    ])


def draw_labelled(rng, path):
    t = rng.choice([150, 180, 200, 250])
    cover = rng.choice([20, 30, 40, 50])
    bar = f"D{rng.choice([10, 13, 16])}@{rng.choice([150, 200, 250, 300])}"
    fck = rng.choice([21, 24, 27, 30, 35])
    img, d = canvas()
    f = font(13)
    x0, x1, y0, y1 = 16, 156, 44, 44 + round(t * 0.4)  # 0.4 px per mm
    d.text((112, 18), "SLAB SECTION", fill="black", font=font(15), anchor="mm")
    d.rectangle([x0, y0, x1, y1], fill=(210, 210, 210), outline="black", width=2)
    yb = y1 - max(cover // 4, 6)
    for i in range(6):
        x = x0 + 14 + i * 22
        d.ellipse([x - 4, yb - 4, x + 4, yb + 4], fill="black")
    dim_v(d, x1 + 12, y0, y1, "", f)
    d.text((x1 + 17, (y0 + y1) // 2), f"T={t}", fill="black", font=f, anchor="lm")
    d.line([x0 + 36, yb, x0 + 56, y1 + 22], fill="black")
    d.text((x0 + 58, y1 + 22), bar, fill="black", font=f, anchor="lm")
    d.text((16, y1 + 44), f"COVER {cover}", fill="black", font=f, anchor="lm")
    d.text((16, y1 + 64), f"fck = {fck} MPa", fill="black", font=f, anchor="lm")
    img.save(path)
    return rng.choice([
        ("What is the slab thickness shown, in millimetres?", f"{t} mm"),
        ("What concrete cover is specified in this drawing?", f"{cover} mm"),
        ("What bar size and spacing is labelled on this slab section?", bar),
        ("이 도면에 표시된 콘크리트 설계기준강도는 얼마입니까?", f"{fck} MPa"),
    ])


DRAWERS = {"sign": draw_sign, "plan": draw_plan, "count": draw_section,
           "labelled": draw_labelled}


def vision_rows(rng, split, per_kind):
    rows = []
    for kind, fn in DRAWERS.items():
        for i in range(per_kind):
            name = f"{split}_{kind}_{i:02d}.png"
            q, a = fn(rng, IMG_DIR / name)
            rows.append(row(f"vision_{kind}", q, "", a, image=f"images/{name}"))
    return rows


# ---------------------------------------------------------- pretrain corpus
def josa(word, with_batchim, without):
    """Korean particle choice by final consonant (은/는, 이/가)."""
    c = word[-1]
    has = "가" <= c <= "힣" and (ord(c) - 0xAC00) % 28 != 0
    return word + (with_batchim if has else without)


CATS = {"concrete": "concrete work", "rebar": "reinforcement work",
        "formwork": "formwork and temporary works", "steel": "structural steel work",
        "earthwork": "earthwork and foundations", "safety": "site safety",
        "finishing": "finishing work", "MEP": "mechanical, electrical and plumbing (MEP) work",
        "surveying": "surveying", "drawings": "drawings and contract documents"}

CORPUS_TEMPLATES = [
    "On Korean construction sites, {en} is called {ko}. It is a term from {cat}: {gist}. "
    "{ko_topic} 영어로 {en}에 해당한다.",
    "{ko} ({en}) appears often in Korean documents on {cat}. An English-speaking engineer "
    "would say {en} where a Korean foreman says {ko}. In plain words, {gist}.",
    "The English word {en} and the Korean word {ko} name the same thing in {cat}. "
    "Put simply, {gist}. 영어 도면과 문서에서는 {ko} 대신 '{en}' 표기를 쓴다.",
]


def corpus_paragraph(rng, t):
    gist = t["def_en"].rstrip(".")
    gist = "it means " + gist[0].lower() + gist[1:]  # reworded, never the answer verbatim
    return rng.choice(CORPUS_TEMPLATES).format(
        en=t["en"], ko=t["ko"], cat=CATS[t["cat"]], gist=gist, ko_topic=josa(t["ko"], "은", "는"))


GLOSSARY_HEADER = "Glossary of construction terms (English / Korean):"


def glossary_blocks(rng, terms, per_block=6):
    """Dictionary lines for the corpus, both directions per term, in shuffled blocks of `per_block` terms:
    "formwork (Korean: 거푸집). 거푸집 (English: formwork)." The tiny base then knows every pair in one plain
    form, as a large model knows them from dictionaries; fine-tuning teaches the question-and-answer format
    that brings them out (measured on the tiny profile: 86% exact on training rows after 250 steps, against
    75% with the paragraphs alone)."""
    lines = [f"{t['en']} (Korean: {t['ko']}). {t['ko']} (English: {t['en']})." for t in terms]
    rng.shuffle(lines)
    return [GLOSSARY_HEADER + "\n" + "\n".join(lines[i:i + per_block]) for i in range(0, len(lines), per_block)]


# ------------------------------------------------------------------ examples
def write_examples(out, sign, count):
    """sign/count: the train rows for train_sign_00 / train_count_00 (real Q&A)."""
    out.mkdir(exist_ok=True)
    img = "../" + sign["image"]
    good = {"instruction": "Translate this Korean construction term into English.",
            "input": "거푸집", "output": "formwork"}
    broken = [
        good,
        '{"instruction": "Define the construction term.", "input": "slab", "output": ',  # invalid JSON
        {"instruction": "Define the construction term.", "input": "beam"},  # missing output
        {"instruction": "다음 건설 용어를 한국어로 번역하세요.", "input": "rebar", "output": "철근"},
        {"instruction": "How many rebars?", "input": "", "output": 6},  # number
        {"instruction": "Define the construction term.", "input": "pile", "output": None},
        {"instruction": "List two safety items.", "input": "", "output": ["hard hat", "boots"]},
        {"instruction": "Define the construction term.", "input": "column", "output": ""},
        {"instruction": "What does this safety sign require?", "input": "", "output": "A hard hat.",
         "image": "../images/does_not_exist.png"},
        {"instruction": sign["instruction"], "input": "", "output": sign["output"], "image": img},
    ]
    with open(out / "broken.jsonl", "w", encoding="utf-8", newline="\n") as fh:
        for r in broken:
            fh.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")

    def msg(role, *parts):
        return {"role": role, "content": list(parts)}

    def txt(s):
        return {"type": "text", "text": s}

    chat = [
        {"messages": [msg("user", {"type": "image"}, txt(sign["instruction"])),
                      msg("assistant", txt(sign["output"]))],
         "images": [img]},
        {"messages": [msg("user", {"type": "image"}, txt(count["instruction"])),
                      msg("assistant", txt(count["output"]))],
         "images": ["../" + count["image"]]},
        {"messages": [msg("user", txt("Translate this Korean construction term into English.\n거푸집")),
                      msg("assistant", txt("formwork"))]},
        {"messages": [msg("user", txt("다음 건설 용어를 한국어로 번역하세요.\nrebar")),
                      msg("assistant", txt("철근"))]},
        {"messages": [{"role": "user", "content": "Define the construction term.\nshoring"},
                      {"role": "assistant",
                       "content": "Temporary vertical supports that carry formwork and fresh concrete loads."}]},
    ]
    with open(out / "chat_format.jsonl", "w", encoding="utf-8", newline="\n") as fh:
        for r in chat:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


# ------------------------------------------------------------- tiny profile
TINY_TERMS = 20  # glossary terms the tiny profile fine-tunes on, each in both translation directions
TINY_IMAGE_ROWS = 4  # safety-sign rows (short answers): the vision path runs too


def other_wording(r):
    """The same translation question in the other wording of its direction (English <-> Korean instruction)."""
    kind = r["_kind"]
    (other,) = [i for i in INSTR[kind] if i != r["instruction"]]
    return row(kind, other, r["input"], r["output"])


def tiny_rows(train, eval_rows, train_terms, eval_terms):
    """The tiny profile's workshop set: what a 4-layer, 128-wide model can visibly learn in a couple of minutes.

    train: both translation directions of TINY_TERMS training terms (short answers) + TINY_IMAGE_ROWS sign rows.
    eval: the same terms asked in the other wording (answers seen in training, questions not), translations of
    held-out terms (answers never seen in fine-tuning; the pre-training corpus has them), and 2 image rows.
    All rows are copies of rows of construction_{train,eval}.jsonl or their rewording.
    """
    rng = random.Random(SEED + 1)  # its own stream: the main files stay as they are
    short = [t for t in train_terms if len(t["en"].split()) <= 2]
    terms = {t["en"] for t in rng.sample(short, TINY_TERMS)}
    pick = [r for r in train if r["_kind"] in ("ko2en", "en2ko") and (r["input"] in terms or r["output"] in terms)]
    signs = [r for r in train if r["_kind"] == "vision_sign"][:TINY_IMAGE_ROWS]
    tiny_train = pick + signs
    rng.shuffle(tiny_train)
    reworded = [other_wording(r) for r in rng.sample(pick, 12)]
    new_terms = [r for r in eval_rows if r["_kind"] in ("ko2en", "en2ko")][:8]
    images = [r for r in eval_rows if r["_kind"] == "vision_sign"][:2]
    tiny_eval = reworded + new_terms + images
    rng.shuffle(tiny_eval)
    return tiny_train, tiny_eval


# ---------------------------------------------------------------------- main
def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for r in rows:
            fh.write(json.dumps({k: v for k, v in r.items() if k != "_kind"},
                                ensure_ascii=False) + "\n")


def check_held_out(train, eval_terms):
    for t in eval_terms:
        for r in train:
            blob = " ".join([r["instruction"], r["input"], r["output"]]).lower()
            for s in (t["en"].lower(), t["ko"]):
                assert s not in blob, f"eval term {s!r} leaks into train row {r}"


def main():
    rng = random.Random(SEED)
    if IMG_DIR.exists():
        shutil.rmtree(IMG_DIR)
    IMG_DIR.mkdir()

    eval_terms = [t for t in GLOSSARY if t["en"] in EVAL_TERMS]
    train_terms = [t for t in GLOSSARY if t["en"] not in EVAL_TERMS]
    assert len(eval_terms) == len(EVAL_TERMS)

    train = [r for t in train_terms for r in term_rows(rng, t)]
    seen = set()  # site tasks are unique across both splits
    train += unique_tasks(rng, 30, seen)
    train += vision_rows(rng, "train", 10)
    ev = [r for t in eval_terms for r in term_rows(rng, t)]
    ev += unique_tasks(rng, 8, seen)
    ev += vision_rows(rng, "eval", 2)
    rng.shuffle(train)
    rng.shuffle(ev)
    check_held_out(train, eval_terms)

    write_jsonl(HERE / "construction_train.jsonl", train)
    write_jsonl(HERE / "construction_eval.jsonl", ev)

    paras = [corpus_paragraph(rng, t) for t in GLOSSARY]
    corpus = "\n\n".join(paras + glossary_blocks(random.Random(SEED + 2), GLOSSARY)) + "\n"
    # terms themselves must appear; definition/task answers must not
    answers = {r["output"] for r in train + ev if r["_kind"] not in ("ko2en", "en2ko") and len(r["output"]) > 12}
    dup = [a for a in answers if a in corpus]
    assert not dup, f"corpus repeats answers verbatim: {dup[:5]}"
    (HERE / "pretrain_corpus.txt").write_text(corpus, encoding="utf-8")

    tiny_train, tiny_eval = tiny_rows(train, ev, train_terms, eval_terms)
    write_jsonl(HERE / "construction_tiny_train.jsonl", tiny_train)
    write_jsonl(HERE / "construction_tiny_eval.jsonl", tiny_eval)

    by_img = {r.get("image"): r for r in train}
    write_examples(HERE / "examples", by_img["images/train_sign_00.png"],
                   by_img["images/train_count_00.png"])

    # summary
    print(f"terms: {len(GLOSSARY)} ({len(train_terms)} train, {len(eval_terms)} eval)")
    for name, rows in (("train", train), ("eval", ev)):
        c = Counter(r["_kind"] for r in rows)
        print(f"{name}: {len(rows)} rows  " + "  ".join(f"{k}={c[k]}" for k in sorted(c)))
    print(f"images: {len(list(IMG_DIR.glob('*.png')))}  corpus paragraphs: {len(paras)}")
    print(f"tiny profile: train {len(tiny_train)} rows, eval {len(tiny_eval)} rows")


if __name__ == "__main__":
    main()
