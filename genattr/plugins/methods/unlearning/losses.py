"""Training-item losses L(z, θ) as the unlearning score averages them (the scoring path, with its UNet counter)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .update import _device_of, _eval_mode


def scoring_timesteps(timesteps, num_train_timesteps: int) -> list[int]:
    """The scoring timesteps: ``timesteps`` strided ones (``seeding.strided_timesteps``) for a count, or the given
    list."""
    from genattr.harness import seeding

    if isinstance(timesteps, (list, tuple)):
        return [int(t) for t in timesteps]
    return seeding.strided_timesteps(int(timesteps), int(num_train_timesteps))


class TrainingLosses:
    """Walks training items in chunks; each chunk's rows (item × caption × timestep × flip: latents, text
    embeddings, noise) are prepared once and evaluated under every given weight set.

    ``timesteps``: a count of strided timesteps or an explicit list. ``__call__(param_sets, indices, subsets=None)``
    returns one float64 array ``len(indices) × flips`` per weight set (``None`` = θ0), each entry the mean loss over
    the item's scored captions and timesteps; ``subsets[q]`` (positions into ``indices``) limits weight set ``q`` to
    those items (the others are NaN), so different queries can share one walk over different heads.

    :attr:`evaluations` counts the UNet evaluations (rows × weight sets) this instance ran — the cost figure of the
    scoring path."""

    def __init__(self, model, dataset, timesteps, captions: int | None, flips: bool, seed: int,
                 batch_size: int = 256, progress: bool = False):
        self.model, self.dataset = model, dataset
        self.ts = scoring_timesteps(timesteps, int(model.num_train_timesteps))
        self.captions, self.flips, self.seed = captions, flips, seed
        self.batch_size, self.progress = batch_size, progress
        self.ids = list(dataset.ids)
        self.evaluations = 0

    @property
    def n_flips(self) -> int:
        return 2 if self.flips else 1

    def _caps(self, i: int) -> tuple[str, ...]:
        cs = self.dataset.captions(i)
        return cs if self.captions is None else cs[: self.captions]

    def _prepare(self, items: Sequence[int]):
        import torch

        from genattr.harness.seeding import item_noise

        model, dev = self.model, _device_of(self.model)
        with torch.no_grad():
            imgs = self.dataset.images(list(items)).to(dev)
            lats = [model.latents(imgs)]
            if self.flips:
                lats.append(model.latents(imgs.flip(-1)))
            lat = torch.stack(lats, 1)  # B × flips × c × h × w
            shape = tuple(lat.shape[2:])
            texts, rows = [], []  # rows: (local item, text index, t, flip)
            noises = []
            for b, i in enumerate(items):
                for c, cap in enumerate(self._caps(i)):
                    texts.append(cap)
                    for t in self.ts:
                        eps = item_noise(self.seed, self.ids[i], c, t, shape)
                        for f in range(self.n_flips):
                            rows.append((b, len(texts) - 1, t, f))
                            noises.append(eps)
            emb = model.text_embeddings(texts)
            r = torch.tensor(rows, dtype=torch.long)
            return (lat[r[:, 0], r[:, 3]], emb[r[:, 1].to(emb.device)], r[:, 2].to(dev),
                    torch.stack(noises).to(dev, lat.dtype), r)

    def _evaluate(self, lat, emb, t, noise, params):
        import torch

        vals = []
        for s in range(0, lat.shape[0], self.batch_size):
            e = slice(s, s + self.batch_size)
            vals.append(self.model.denoise_loss(lat[e], emb[e], t[e], noise[e], params=params).detach().double().cpu())
        self.evaluations += int(lat.shape[0])
        return torch.cat(vals).numpy() if vals else None

    def __call__(self, param_sets: Sequence[Mapping[str, Any] | None], indices: Sequence[int] | None = None,
                 desc: str = "training losses", subsets: Sequence[Sequence[int]] | None = None) -> list:
        import numpy as np
        import torch

        from genattr.harness.progress import bar

        indices = list(range(len(self.dataset))) if indices is None else [int(i) for i in indices]
        out = [np.zeros((len(indices), self.n_flips), dtype=np.float64) for _ in param_sets]
        member = None
        if subsets is not None:
            member = np.zeros((len(param_sets), len(indices)), dtype=bool)
            for q, sub in enumerate(subsets):
                member[q, np.asarray(list(sub), dtype=np.int64)] = True
            for q in range(len(param_sets)):
                out[q][~member[q]] = np.nan
            walk = np.flatnonzero(member.any(0))  # positions needed by some weight set
        else:
            walk = np.arange(len(indices))
        per_item = max(1, len(self.ts) * self.n_flips * (1 if self.captions is None else self.captions))
        chunk = max(1, max(self.batch_size, 1024) // per_item)
        with _eval_mode(self.model), torch.inference_mode():
            for start in bar(range(0, len(walk), chunk), desc=desc, unit="chunk", enabled=self.progress):
                pos = walk[start:start + chunk]
                items = [indices[p] for p in pos]
                lat, emb, t, noise, rows = self._prepare(items)
                local = rows[:, 0].numpy()
                flip = rows[:, 3].numpy()
                for q, params in enumerate(param_sets):
                    keep = np.ones(len(items), dtype=bool) if member is None else member[q, pos]
                    if not keep.any():
                        continue
                    sel = keep[local]
                    if sel.all():
                        v = self._evaluate(lat, emb, t, noise, params)
                    else:
                        idx = torch.as_tensor(np.flatnonzero(sel))
                        v = self._evaluate(lat[idx], emb[idx.to(emb.device)], t[idx.to(t.device)],
                                           noise[idx.to(noise.device)], params)
                    sums = np.zeros((len(items), self.n_flips))
                    cnts = np.zeros((len(items), self.n_flips))
                    np.add.at(sums, (local[sel], flip[sel]), v)
                    np.add.at(cnts, (local[sel], flip[sel]), 1.0)
                    out[q][pos[keep]] = sums[keep] / cnts[keep]
        return out
