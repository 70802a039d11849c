"""Brief full-parameter pre-training of the tiny model on plain text (notebook 02 explains why).

A randomly initialised model has nothing for LoRA to adapt. A few hundred steps on
data/pretrain_corpus.txt (encyclopedic text about the terms, not the instruction rows) give
the tiny base some domain text; fine-tuning then teaches it the chat format, the answers' style
and to stop at <|eot_id|> — the same division of labour as with the real 11B model.
Written by hand (not Trainer) because it is a dozen lines and runs once while the cache is built.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from tqdm.auto import tqdm

from utils.config import PINNED_DATE

DEFAULT_PRETRAIN_STEPS = 600
# The first term named in a corpus paragraph (English or Korean), used to phrase a question.
TERM = re.compile(r"(?:English word|called|term) ([^.,]+?)(?: and|[.,])")
GLOSSARY_HEADER = "Glossary of construction terms"  # the dictionary blocks data/build_dataset.py appends


def corpus_texts(processor, corpus_path: Path) -> list[str]:
    """Each paragraph twice: as plain text, and as a chat answer to "Tell me about <term>".

    The chat copies give the tiny base what the real Instruct model already has (the chat format
    and stopping at <|eot_id|>), so fine-tuning is left with what it does on the 11B model:
    the answer style of the data set (short definitions, translations, one-word answers).
    """
    paragraphs = [p.strip() for p in Path(corpus_path).read_text(encoding="utf-8").split("\n\n") if p.strip()]
    texts = [processor.tokenizer.bos_token + p for p in paragraphs]
    for i, paragraph in enumerate(paragraphs):
        if paragraph.startswith(GLOSSARY_HEADER):  # a dictionary block: a chat answer to a request for a list
            question = "건설 용어를 영어와 한국어로 알려 주세요." if i % 2 else "List some construction terms in English and Korean."
            messages = [{"role": "user", "content": question}, {"role": "assistant", "content": paragraph}]
            texts.append(processor.apply_chat_template(messages, tokenize=False, date_string=PINNED_DATE))
            continue
        term = TERM.search(paragraph)
        question = f"Tell me about {term.group(1)}." if term and i % 2 else "이 건설 용어에 대해 알려 주세요."
        if term and i % 2 == 0:
            question = f"{term.group(1)}에 대해 알려 주세요."
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": paragraph}]
        texts.append(processor.apply_chat_template(messages, tokenize=False, date_string=PINNED_DATE))
    return texts


def corpus_blocks(processor, corpus_path: Path, block_size: int = 128) -> torch.Tensor:
    """All corpus texts as one token stream cut into equal blocks."""
    ids: list[int] = []
    for text in corpus_texts(processor, corpus_path):
        ids += processor.tokenizer(text, add_special_tokens=False).input_ids
    n = len(ids) // block_size
    return torch.tensor(ids[: n * block_size]).view(n, block_size)


def pretrain_tiny(model, processor, corpus_path: Path, steps: int = DEFAULT_PRETRAIN_STEPS,
                  batch_size: int = 8, lr: float = 3e-3, seed: int = 0) -> list[float]:
    """Train the language model on the corpus; returns the loss every 10 steps.

    Speed trick (CPU, 2 cores): the 128k-row embedding and lm_head dominate the optimizer step,
    so only the rows of tokens that occur in the corpus are trained (a softmax over those tokens),
    then written back. The other rows keep their small random init.
    """
    # Deterministic kernels: without them the threaded backward of the embedding-row lookup sums in a varying
    # order, and two fresh clones got bases that differ in the last bits and, after 600 steps, in their answers.
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _pretrain(model, processor, corpus_path, steps, batch_size, lr, seed)
    finally:
        torch.use_deterministic_algorithms(deterministic)


def _pretrain(model, processor, corpus_path, steps, batch_size, lr, seed) -> list[float]:
    torch.manual_seed(seed)
    blocks = corpus_blocks(processor, corpus_path)
    vocab = torch.unique(blocks)
    local = torch.full((model.config.text_config.vocab_size + 8,), -100)
    local[vocab] = torch.arange(len(vocab))
    text_model = model.model.language_model
    embed = torch.nn.Parameter(text_model.embed_tokens.weight.data[vocab].clone())
    head = torch.nn.Parameter(model.lm_head.weight.data[vocab].clone())
    params = [p for n, p in text_model.named_parameters() if "embed_tokens" not in n] + [embed, head]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    history = []
    for step in tqdm(range(steps), desc="pre-training tiny base", mininterval=5):
        batch = local[blocks[torch.randint(len(blocks), (batch_size,))]]
        hidden = text_model(inputs_embeds=embed[batch]).last_hidden_state
        logits = hidden[:, :-1] @ head.T
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, len(vocab)), batch[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 10 == 0 or step == steps - 1:
            history.append(round(loss.item(), 4))
    with torch.no_grad():
        text_model.embed_tokens.weight[vocab] = embed
        model.lm_head.weight[vocab] = head
    model.eval()
    return history
