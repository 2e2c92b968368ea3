"""Where an answer ends: EOS, ``max_new_tokens`` and stop strings, checked token by token inside a block.

A speculative step appends several tokens at once; plain ``generate`` would have stopped after the first
token that meets a criterion, so the block is cut right after it (that token kept, as ``generate`` keeps it).
Stop strings reuse Hugging Face's ``StopStringCriteria`` (the string must end in the last token, overhangs
allowed) on the same ids ``generate`` sees, so both stop at the same token.
"""

from __future__ import annotations

from typing import Sequence

import torch

from evcascade.errors import InputError


class StopChecker:
    """The stop criteria of one request.

    >>> checker = StopChecker(eos_token_ids=(2,), max_new_tokens=10)
    >>> checker.first_stop(torch.tensor([[1, 5]]), num_generated=3, new_ids=torch.tensor([[7, 2, 9]]))
    (2, 'eos')
    """

    def __init__(self, *, eos_token_ids: Sequence[int], max_new_tokens: int, stop_strings: Sequence[str] = (),
                 tokenizer=None) -> None:
        self.eos_token_ids = torch.tensor(sorted({int(e) for e in eos_token_ids}), dtype=torch.long)
        self.max_new_tokens = max_new_tokens
        self._strings = None
        if stop_strings:
            if tokenizer is None:
                raise InputError(f"stop_strings {list(stop_strings)!r} need a tokenizer to match against")
            from transformers import StopStringCriteria

            self._strings = StopStringCriteria(tokenizer=tokenizer, stop_strings=list(stop_strings))

    def first_stop(self, sequence_ids: torch.LongTensor, num_generated: int,
                   new_ids: torch.LongTensor) -> tuple[int, str] | None:
        """How many of ``new_ids [B, m]`` to keep and why, if the answer ends inside them; else None.

        ``sequence_ids [B, L]`` is everything before ``new_ids`` (prompt + answer so far, ``num_generated`` of
        it answer); a stop string may start there."""
        eos = self.eos_token_ids.to(new_ids.device)
        is_eos = torch.isin(new_ids[0], eos) if eos.numel() else torch.zeros_like(new_ids[0], dtype=torch.bool)  # [m]
        tail_length = self._strings.maximum_token_len if self._strings is not None else 0
        tail = sequence_ids[:, -tail_length:] if tail_length else sequence_ids[:, :0]
        for i in range(new_ids.shape[1]):
            if bool(is_eos[i]):
                return i + 1, "eos"
            if self._strings is not None:
                window = torch.cat([tail, new_ids[:, : i + 1]], dim=1)[:, -tail_length:]  # [B, <= max token len]
                if bool(self._strings(window, None)[0]):
                    return i + 1, "stop_string"
            if num_generated + i + 1 >= self.max_new_tokens:
                return i + 1, "max_new_tokens"
        return None
