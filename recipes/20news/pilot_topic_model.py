"""Pilot: the TCNLM's topic model trained alone on 20 Newsgroups document bags (each training
document once per epoch; Adam with beta1 0.99, batch 200), NPMI of the top 10 words on the test
documents every fifth of the run (docs/tcnlm.md, "Topic pre-training and KL annealing").

  python recipes/20news/pilot_topic_model.py [K=10] [EPOCHS=100] [LR=2e-3] [DROPOUT=0] [SHARED=../shared/data]
"""
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from speechlab.data.corpus import DocumentDataModule  # noqa: E402
from speechlab.functional.topic import topic_npmi  # noqa: E402
from speechlab.nn.topic import NeuralTopicModel  # noqa: E402

torch.manual_seed(0)
torch.set_num_threads(1)
SHARED = Path(sys.argv[5] if len(sys.argv) > 5 else "../shared/data")
dm = DocumentDataModule(train=str(SHARED / "text/20news/train.jsonl"), test=str(SHARED / "text/20news/test.jsonl"),
                        val_fraction=0.1, clean="usenet", min_freq=3, stop_words="sklearn",
                        topic_top_fraction=0.001, topic_min_count=50, max_sentence_len=30)
dm.setup()
V = len(dm.topic_vocab)
train = dm.splits["train"].doc_term_matrix(V)
test_ref = dm.splits["test"].doc_term_matrix(V, binary=True)
train = train[train.sum(1) > 0]
print("docs", train.shape, "V", V)
K = int(sys.argv[1]) if len(sys.argv) > 1 else 10
epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 100
lr = float(sys.argv[3]) if len(sys.argv) > 3 else 2e-3
drop = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
ntm = NeuralTopicModel(V, K, hidden_size=256, num_layers=2, dropout=drop)
opt = torch.optim.Adam(ntm.parameters(), lr=lr, betas=(0.99, 0.999))
t0 = time.time()
for ep in range(epochs):
    ntm.train()
    perm = torch.randperm(len(train))
    for i in range(0, len(train), 200):
        bow = train[perm[i:i + 200]]
        out = ntm(bow)
        loss = (out.nll + out.kl).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    if (ep + 1) % max(1, epochs // 5) == 0:
        ntm.eval()
        npmi = topic_npmi(ntm.top_words(10), test_ref).mean().item()
        print(f"epoch {ep+1} loss {loss.item():.1f} NPMI {npmi:.3f} ({time.time()-t0:.0f} s)", flush=True)
vocab = dm.topic_vocab
for row in ntm.top_words(10)[:K]:
    print(" ".join(vocab.decode(row.tolist())))
