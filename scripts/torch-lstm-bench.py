#!/usr/bin/env python3
"""Times PyTorch's cuDNN LSTM at the sizes of ulmfit's `wt103` preset, as the yardstick
for the CUDA kernels: batch 64, bptt 70, embedding 400, hidden 1152, 3 layers, a
60,000-word vocabulary with the decoder tied to the embedding.

Prints one `name<TAB>tokens/s` line per measurement:
  torch_stack_forward         the three LSTM layers alone, forward
  torch_stack_train           the three LSTM layers, forward and backward
  torch_lm_inference          the whole language model, forward, no gradients
  torch_lm_train              the whole language model: forward, loss, backward, SGD step
"""

import argparse
import time

import torch
from torch import nn


class LanguageModel(nn.Module):
    """Embedding, three single-layer LSTMs, and a decoder tied to the embedding."""

    def __init__(self, vocab, embedding, hidden, layers):
        super().__init__()
        self.embedding = nn.Embedding(vocab, embedding)
        widths = [embedding] + [hidden] * (layers - 1) + [embedding]
        self.lstms = nn.ModuleList(
            nn.LSTM(widths[i], widths[i + 1]) for i in range(layers)
        )
        self.decoder = nn.Linear(embedding, vocab)
        self.decoder.weight = self.embedding.weight

    def stack(self, x):
        for lstm in self.lstms:
            x, _ = lstm(x)
        return x

    def forward(self, ids):
        return self.decoder(self.stack(self.embedding(ids)))


def timed(step, repeats):
    step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    torch.backends.cudnn.benchmark = True
    device = torch.device("cuda")
    vocab, embedding, hidden, layers, batch, bptt = 60_000, 400, 1152, 3, 64, 70
    tokens = batch * bptt
    model = LanguageModel(vocab, embedding, hidden, layers).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    ids = torch.randint(vocab, (bptt, batch), device=device)
    targets = torch.randint(vocab, (bptt, batch), device=device)
    x = torch.randn(bptt, batch, embedding, device=device)

    def stack_forward():
        with torch.no_grad():
            model.stack(x)

    def stack_train():
        model.stack(x.requires_grad_()).sum().backward()

    def lm_inference():
        with torch.no_grad():
            model(ids)

    def lm_train():
        optimizer.zero_grad(set_to_none=True)
        logits = model(ids)
        loss = nn.functional.cross_entropy(logits.view(-1, vocab), targets.view(-1))
        loss.backward()
        optimizer.step()

    for name, step in [
        ("torch_stack_forward", stack_forward),
        ("torch_stack_train", stack_train),
        ("torch_lm_inference", lm_inference),
        ("torch_lm_train", lm_train),
    ]:
        print(f"{name}\t{tokens / timed(step, args.repeats):.0f}")


if __name__ == "__main__":
    main()
