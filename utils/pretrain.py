"""Brief full-parameter pre-training of the tiny model on plain text (notebook 02 explains why).

A randomly initialised model has nothing for LoRA to adapt. A few hundred steps on
data/pretrain_corpus.txt (encyclopedic text about the terms, not the instruction rows) give
the tiny base some domain text; fine-tuning then teaches it the chat format, the answers' style
and to stop at <|eot_id|> — the same division of labour as with the real 11B model.
Written by hand (not Trainer) because it is a dozen lines and runs once while the cache is built.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

DEFAULT_PRETRAIN_STEPS = 300


def corpus_blocks(tokenizer, corpus_path: Path, block_size: int = 64) -> torch.Tensor:
    """The corpus as one token stream (a BOS before each paragraph) cut into equal blocks."""
    paragraphs = [p.strip() for p in Path(corpus_path).read_text(encoding="utf-8").split("\n\n") if p.strip()]
    ids: list[int] = []
    for paragraph in paragraphs:
        ids += [tokenizer.bos_token_id] + tokenizer(paragraph, add_special_tokens=False).input_ids
    n = len(ids) // block_size
    return torch.tensor(ids[: n * block_size]).view(n, block_size)


def pretrain_tiny(model, tokenizer, corpus_path: Path, steps: int = DEFAULT_PRETRAIN_STEPS,
                  batch_size: int = 8, lr: float = 3e-3, seed: int = 0) -> list[float]:
    """Train the language model on the corpus; returns the loss every 10 steps.

    Speed trick (CPU, 2 cores): the 128k-row embedding and lm_head dominate the optimizer step,
    so only the rows of tokens that occur in the corpus are trained (a softmax over those tokens),
    then written back. The other rows keep their small random init.
    """
    torch.manual_seed(seed)
    blocks = corpus_blocks(tokenizer, corpus_path)
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
