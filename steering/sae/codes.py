"""SAE codes of a token sequence kept as each row's nonzeros (`SparseCodes`).

A TopK SAE's code has k nonzeros of thousands (64 of 4,608 for the default SAE). Dense float32 rows take 18 KB a
token, as much as the model's keys and values, and every pass over them (a top-k, a sum per paragraph) reads 38 MB
for a 2,048-token document: on a 2-core CPU each such pass cost 10-20 ms, more than the work it did. The prefix cache
keeps codes this way, and annotation reads them this way.
"""

from __future__ import annotations

import torch


def nonzeros(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's nonzeros of `dense` `[n, width]`: `(index, value)` `[n, m]`, m the most any row has (a row with
    fewer pads with value 0)."""
    m = int((dense != 0).sum(dim=-1).max()) if len(dense) else 0
    index = dense.abs().topk(m, dim=-1).indices
    return index, dense.gather(-1, index)


class SparseCodes:
    """Rows of SAE codes, `width` columns wide when dense, kept as `index` and `value` `[capacity, k]` (the first
    rows in use), k the most nonzeros a row has had; a row with fewer pads with value 0 at column 0, which adds
    nothing when the rows are made dense again (nor to a sum, a count of positives or a maximum, codes being >= 0).
    """

    def __init__(self, width: int) -> None:
        self.width = width
        self.index = torch.zeros(0, 0, dtype=torch.int32)
        self.value = torch.zeros(0, 0)

    @classmethod
    def of(cls, dense: torch.Tensor) -> SparseCodes:
        """The rows of `dense` `[n, width]`."""
        codes = cls(dense.shape[1])
        index, value = nonzeros(dense)
        codes.put(0, index, value.float())
        return codes

    @property
    def nbytes(self) -> int:
        return self.index.numel() * self.index.element_size() + self.value.numel() * self.value.element_size()

    def put(self, start: int, index: torch.Tensor, value: torch.Tensor) -> None:
        """Keep the rows given by their nonzeros, `index` and `value` `[m, j]` (`SAE.encode_sparse`), as rows `start`
        to `start + m` (rows after them are dropped)."""
        m, j = value.shape
        k = max(j, self.value.shape[1])
        need, have = start + m, self.value.shape[0]
        if need > have or k > self.value.shape[1]:
            size = max(need, have * 5 // 4) if need > have else have
            grown_index = torch.zeros(size, k, dtype=torch.int32)
            grown_value = torch.zeros(size, k)
            kept, width = min(start, have), self.value.shape[1]
            grown_index[:kept, :width] = self.index[:kept]
            grown_value[:kept, :width] = self.value[:kept]
            self.index, self.value = grown_index, grown_value
        self.index[start:need, :j] = index
        self.value[start:need, :j] = value
        self.index[start:need, j:] = 0
        self.value[start:need, j:] = 0

    def first(self, n: int) -> SparseCodes:
        """A copy of the first `n` rows, exactly `n` rows long (the cache goes on changing; this does not)."""
        out = SparseCodes(self.width)
        out.index, out.value = self.index[:n].clone(), self.value[:n].clone()
        return out

    def dense(self, n: int) -> torch.Tensor:
        """The first `n` rows as `[n, width]` float32."""
        out = torch.zeros(n, self.width)
        if n and self.value.shape[1]:
            out.scatter_add_(1, self.index[:n].long(), self.value[:n])
        return out
