"""Choose the SciFact spec's training hyperparameters on a GPU, on TRAINING queries only.

A standalone plain sentence-transformers + torch script (no Ray), meant for a machine with
a GPU where a full sweep takes minutes: it mines hard negatives with the base model
(window range_min..range_max, relative margin), trains each configuration from the base
model on the training queries minus a held-out validation slice, and scores nDCG@10 on
that slice (pytrec_eval). The test split is scored too, for the record only: the choice
is made on validation. Writes JSON.

    python benchmarks/train_sweep.py --data DIR --model DIR --out sweep.json
"""

from __future__ import annotations

import argparse
import json
import random
import time

import numpy as np
import pytrec_eval
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.losses import CachedMultipleNegativesRankingLoss, MultipleNegativesRankingLoss
from transformers import get_linear_schedule_with_warmup


def load(data):
    docs, queries = {}, {}
    for line in open(f"{data}/corpus.jsonl"):
        d = json.loads(line)
        docs[d["_id"]] = f"{d.get('title') or ''} {d.get('text') or ''}".strip()
    for line in open(f"{data}/queries.jsonl"):
        q = json.loads(line)
        queries[q["_id"]] = q["text"]

    def qrels(split):
        out = {}
        for i, line in enumerate(open(f"{data}/qrels/{split}.tsv")):
            p = line.rstrip("\r\n").split("\t")
            if i == 0 and not p[2].isdigit():
                continue
            if int(p[2]) > 0:
                out.setdefault(p[0], {})[p[1]] = int(p[2])
        return out

    return docs, queries, qrels("train"), qrels("test")


def encode(model, texts, bs=256):
    return model.encode(texts, batch_size=bs, normalize_embeddings=True, convert_to_tensor=True)


def ndcg(model, doc_ids, doc_texts, queries, qrels):
    d = encode(model, doc_texts)
    qids = sorted(qrels)
    q = encode(model, [queries[x] for x in qids])
    scores, idx = torch.topk(q @ d.T, 100, dim=1)
    run = {qid: {doc_ids[j]: float(s) for j, s in zip(idx[i].tolist(), scores[i].tolist())} for i, qid in enumerate(qids)}
    ev = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"})
    res = ev.evaluate(run)
    return {"ndcg@10": float(np.mean([r["ndcg_cut_10"] for r in res.values()])),
            "recall@100": float(np.mean([r["recall_100"] for r in res.values()]))}


def mine(model, doc_ids, doc_texts, queries, qrels, n, rmin, rmax, rel_margin):
    d = encode(model, doc_texts)
    pos_index = {x: i for i, x in enumerate(doc_ids)}
    rows = []
    for qid, rel in qrels.items():
        qv = encode(model, [queries[qid]])[0]
        s = qv @ d.T
        order = torch.argsort(s, descending=True)[:rmax].tolist()
        for pid in rel:
            ps = float(s[pos_index[pid]])
            negs = [j for j in order[rmin:] if doc_ids[j] not in rel and float(s[j]) <= ps * (1 - rel_margin)][:n]
            rows.append((queries[qid], doc_texts[pos_index[pid]], [doc_texts[j] for j in negs]))
    return rows


def train(model_dir, rows, cfg, device):
    torch.manual_seed(12)
    random.seed(12)
    model = SentenceTransformer(model_dir, device=device).float()  # fp32 master weights
    model.max_seq_length = cfg.get("seq", 256)
    k = cfg["neg"]
    rows = [r for r in rows if len(r[2]) >= k]
    if cfg.get("loss") == "cached":
        loss = CachedMultipleNegativesRankingLoss(model, scale=cfg.get("scale", 20), mini_batch_size=32)
    else:
        loss = MultipleNegativesRankingLoss(model, scale=cfg.get("scale", 20))
    bs = cfg["bs"]
    steps = int(len(rows) // bs * cfg["ep"])
    opt = torch.optim.AdamW(loss.parameters(), lr=cfg["lr"], weight_decay=0.01)
    sch = get_linear_schedule_with_warmup(opt, int(0.1 * steps), steps)
    model.train()
    step = 0
    while step < steps:
        random.shuffle(rows)
        for i in range(0, len(rows) - bs + 1, bs):
            if step >= steps:
                break
            b = rows[i : i + bs]
            cols = [[r[0] for r in b], [r[1] for r in b]] + [[r[2][j] for r in b] for j in range(k)]
            feats = [{kk: (v.to(device) if hasattr(v, "to") else v) for kk, v in model.preprocess(c).items()} for c in cols]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.get("bf16", False)):
                out = loss(feats, None)
            out.backward()
            torch.nn.utils.clip_grad_norm_(loss.parameters(), 1.0)
            opt.step()
            sch.step()
            opt.zero_grad()
            step += 1
    model.eval()
    return model, steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--val", type=int, default=150)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    docs, queries, train_q, test_q = load(args.data)
    doc_ids = list(docs)
    doc_texts = [docs[x] for x in doc_ids]
    held = set(random.Random(12).sample(sorted(train_q), args.val))
    val_q = {q: r for q, r in train_q.items() if q in held}
    fit_q = {q: r for q, r in train_q.items() if q not in held}
    base = SentenceTransformer(args.model, device=device)
    results = {"base": {"val": ndcg(base, doc_ids, doc_texts, queries, val_q),
                        "test": ndcg(base, doc_ids, doc_texts, queries, test_q)}}
    print("base", results["base"], flush=True)
    mined = {}
    configs = [
        dict(name="ref", neg=3, bs=32, lr=2e-5, ep=1, rmin=10),
        dict(name="n3_lr5e-5_e1", neg=3, bs=32, lr=5e-5, ep=1, rmin=10),
        dict(name="n1_lr5e-5_e2", neg=1, bs=32, lr=5e-5, ep=2, rmin=10),
        dict(name="n1_lr1e-4_e1", neg=1, bs=32, lr=1e-4, ep=1, rmin=10),
        dict(name="n1_lr5e-5_e1", neg=1, bs=32, lr=5e-5, ep=1, rmin=10),
        dict(name="n3_lr5e-5_e2", neg=3, bs=32, lr=5e-5, ep=2, rmin=10),
        dict(name="n1_lr5e-5_e2_seq128", neg=1, bs=32, lr=5e-5, ep=2, rmin=10, seq=128),
        dict(name="n1_lr5e-5_e2_r0", neg=1, bs=32, lr=5e-5, ep=2, rmin=0),
        dict(name="n0_lr5e-5_e2", neg=0, bs=32, lr=5e-5, ep=2, rmin=10),
        dict(name="n1_lr5e-5_e2_bf16", neg=1, bs=32, lr=5e-5, ep=2, rmin=10, bf16=True),
        dict(name="n1_cached_bs128_lr1e-4_e3", neg=1, bs=128, lr=1e-4, ep=3, rmin=10, loss="cached"),
        dict(name="n3_lr1e-4_e2", neg=3, bs=32, lr=1e-4, ep=2, rmin=10),
        dict(name="n1_lr2e-4_e2", neg=1, bs=32, lr=2e-4, ep=2, rmin=10),
        dict(name="n1_lr1e-4_e3", neg=1, bs=32, lr=1e-4, ep=3, rmin=10),
    ]
    for cfg in configs:
        key = cfg["rmin"]
        if key not in mined:
            mined[key] = mine(base, doc_ids, doc_texts, queries, fit_q, 3, cfg["rmin"], 100, 0.05)
        t = time.time()
        model, steps = train(args.model, list(mined[key]), cfg, device)
        r = {"cfg": cfg, "steps": steps, "train_s": round(time.time() - t, 1),
             "val": ndcg(model, doc_ids, doc_texts, queries, val_q),
             "test": ndcg(model, doc_ids, doc_texts, queries, test_q)}
        results[cfg["name"]] = r
        print(cfg["name"], r["val"], r["test"], r["train_s"], flush=True)
        json.dump(results, open(args.out, "w"), indent=1)
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
