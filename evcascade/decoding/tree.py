"""Token trees: several draft chains merged into one trie, verified by ONE target forward.

Node 0 is the root: the pending token (the target's last choice, not yet in its cache). Every other node is a
drafted token whose parent has a smaller index, so a chain of k drafts is the tree with parents
``[-1, 0, 1, ..., k-1]``. The target sees the nodes in index order with

- a tree attention mask: node i attends to every cached position (the visual prefix, prompt and answer so far)
  and to its own ancestors and itself, nothing else (``attention_mask``, float additive ``[1, 1, n, past + n]``);
- depth-based positions: node i sits at ``past + depth[i]`` (``position_ids``),

so row i of the logits is the target's distribution after the path root -> i, exactly as if that path alone had
been verified. The accepted path (``accept_path``) follows, from the root, the child whose token equals the
target's choice at its parent, as far as such a child exists: it is the longest path whose every token is the
target's own choice, so the answer is the target's whatever the tree holds (lossless for greedy and coupled
sampling). The KV cache then keeps only the root's and the path's entries (``Verifier.keep_tree_path``).

All functions are pure: they read tensors and lists and return new ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch


@dataclass(frozen=True)
class TokenTree:
    """A trie of drafts: ``token_ids [n]`` (node 0 the root), ``parents`` (``parents[0] == -1``), and per node the
    name of the level that proposed it (``sources[0]`` is "target")."""

    token_ids: torch.LongTensor
    parents: tuple[int, ...]
    sources: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        n = int(self.token_ids.shape[0])
        if self.token_ids.ndim != 1 or n == 0 or len(self.parents) != n or self.parents[0] != -1:
            raise ValueError(f"a tree needs token_ids [n >= 1] and n parents starting with -1, got "
                             f"{tuple(self.token_ids.shape)} and {list(self.parents)}")
        if any(not 0 <= p < i for i, p in enumerate(self.parents) if i):
            raise ValueError(f"every node's parent must come before it, got parents {list(self.parents)}")

    @property
    def num_nodes(self) -> int:
        return int(self.token_ids.shape[0])

    @property
    def is_chain(self) -> bool:
        return all(p == i - 1 for i, p in enumerate(self.parents))

    def depths(self) -> list[int]:
        """Per node, its distance from the root (root: 0)."""
        depths = [0] * self.num_nodes
        for i in range(1, self.num_nodes):
            depths[i] = depths[self.parents[i]] + 1
        return depths

    def children(self, node: int) -> list[int]:
        return [i for i in range(node + 1, self.num_nodes) if self.parents[i] == node]


def build_tree(root_id: int, paths: Sequence[Sequence[int]],
               sources: Sequence[str | Sequence[str]] | None = None) -> TokenTree:
    """Merge draft ``paths`` (each a list of token ids following the root) into a trie; ``sources`` names each
    path's proposer (one name, or one per token); a node shared by several paths is named after the first path
    that made it.

    >>> tree = build_tree(7, [[1, 2, 3], [1, 4], [5]], ["L2", "L1", "ngram"])
    >>> tree.token_ids.tolist(), list(tree.parents), list(tree.sources)
    ([7, 1, 2, 3, 4, 5], [-1, 0, 1, 2, 1, 0], ['target', 'L2', 'L2', 'L2', 'L1', 'ngram'])
    """
    sources = list(sources) if sources is not None else ["draft"] * len(paths)
    if len(sources) != len(paths):
        raise ValueError(f"one source per path: {len(paths)} paths, {len(sources)} sources")
    tokens, parents, names = [int(root_id)], [-1], ["target"]
    child_of: dict[tuple[int, int], int] = {}
    for path, source in zip(paths, sources):
        node = 0
        names_of_path = [source] * len(path) if isinstance(source, str) else list(source)
        if len(names_of_path) != len(path):
            raise ValueError(f"a path of {len(path)} tokens needs as many sources, got {len(names_of_path)}")
        for token, name in zip(path, names_of_path):
            key = (node, int(token))
            if key not in child_of:
                child_of[key] = len(tokens)
                tokens.append(int(token))
                parents.append(node)
                names.append(name)
            node = child_of[key]
    return TokenTree(torch.tensor(tokens, dtype=torch.long), tuple(parents), tuple(names))


def ancestor_matrix(parents: Sequence[int]) -> torch.BoolTensor:
    """``[n, n]``: entry (i, j) is True when node j is node i or one of its ancestors.

    >>> ancestor_matrix([-1, 0, 0]).int().tolist()
    [[1, 0, 0], [1, 1, 0], [1, 0, 1]]
    """
    n = len(parents)
    visible = torch.eye(n, dtype=torch.bool)
    for i in range(1, n):
        if parents[i] >= 0:  # -1: a root hanging off the cached positions (a forest, as in a prefill's tail)
            visible[i] |= visible[parents[i]]  # parents come first, so their rows are complete
    return visible


def attention_mask(parents: Sequence[int], past_length: int, dtype: torch.dtype = torch.float32,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """The float additive mask ``[1, 1, n, past_length + n]``: 0 where node i may attend (every cached position;
    its ancestors and itself), ``-inf`` elsewhere (Hugging Face models take a 4-D mask as it is).

    >>> attention_mask([-1, 0, 0], past_length=1)[0, 0].tolist()
    [[0.0, 0.0, -inf, -inf], [0.0, 0.0, 0.0, -inf], [0.0, 0.0, -inf, 0.0]]
    """
    n = len(parents)
    visible = torch.cat([torch.ones(n, past_length, dtype=torch.bool), ancestor_matrix(parents)], dim=1)  # [n, past+n]
    mask = torch.zeros(n, past_length + n, dtype=dtype)
    mask.masked_fill_(~visible, float("-inf"))
    return mask[None, None].to(device)  # [1, 1, n, past+n]


def position_ids(parents: Sequence[int], past_length: int, device: torch.device | str = "cpu") -> torch.LongTensor:
    """Depth-based positions ``[1, n]``: node i at ``past_length + depth(i)``.

    >>> position_ids([-1, 0, 1, 0], past_length=10).tolist()
    [[10, 11, 12, 11]]
    """
    depths = [0] * len(parents)
    for i in range(1, len(parents)):
        depths[i] = depths[parents[i]] + 1 if parents[i] >= 0 else 0
    return (torch.tensor(depths, dtype=torch.long) + past_length)[None].to(device)


def tail_parents(num_chain: int, parents: Sequence[int]) -> list[int]:
    """Parents of a prefill's tail: ``num_chain`` prompt tokens (a chain) followed by a draft tree's nodes 1..n-1,
    whose root (node 0) is the last of those prompt tokens, or the last cached position when ``num_chain`` is 0
    (then the tree's first level hangs off the cache: parent -1).

    >>> tail_parents(2, [-1, 0, 1, 0])  # prompt a b; tree b -> x -> y, b -> z
    [-1, 0, 1, 2, 1]
    >>> tail_parents(0, [-1, 0, 1, 0])
    [-1, 0, -1]
    """
    chain = [i - 1 for i in range(num_chain)]
    return chain + [num_chain - 1 + parent if num_chain - 1 + parent >= 0 else -1 for parent in parents[1:]]


def accept_path(tree: TokenTree, target_choices: torch.LongTensor) -> tuple[list[int], int]:
    """The accepted path and the target's token after it, given ``target_choices [n]`` (the target's choice after
    each node): from the root, step to the child holding the target's choice while one exists. Returns the path's
    node indices (root excluded) and the target's next token.

    >>> tree = build_tree(7, [[1, 2, 3], [1, 4], [5]])  # nodes: 0:7 1:1 2:2 3:3 4:4 5:5
    >>> accept_path(tree, torch.tensor([1, 4, 0, 0, 9, 0]))  # 7 -> 1 -> 4, then the target says 9
    ([1, 4], 9)
    >>> accept_path(tree, torch.tensor([8, 0, 0, 0, 0, 0]))  # no child of the root holds 8
    ([], 8)
    """
    if target_choices.shape != (tree.num_nodes,):
        raise ValueError(f"target_choices must be [{tree.num_nodes}], got {tuple(target_choices.shape)}")
    choices = target_choices.tolist()
    tokens = tree.token_ids.tolist()
    path, node = [], 0
    while True:
        child = next((c for c in tree.children(node) if tokens[c] == choices[node]), None)
        if child is None:
            return path, int(choices[node])
        path.append(child)
        node = child


def compact_kv(tensor: torch.Tensor, past_length: int, keep: Sequence[int]) -> torch.Tensor:
    """A cache tensor ``[..., past_length + n, D]`` (sequence on dim -2) cut to the cached positions and the tree
    nodes ``keep`` (in that order): ``[..., past_length + len(keep), D]``.

    >>> compact_kv(torch.arange(6.0).view(1, 1, 6, 1), past_length=2, keep=[0, 3])[0, 0, :, 0].tolist()
    [0.0, 1.0, 2.0, 5.0]
    """
    index = torch.tensor([*range(past_length), *(past_length + k for k in keep)], device=tensor.device)
    return tensor.index_select(-2, index)
