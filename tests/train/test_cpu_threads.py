"""The thread count as messages say it: singular for one."""

import torch

from ddpmkit.train.runtime import cpu_threads


def test_one_thread_is_singular_and_more_are_plural():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert cpu_threads() == "1 thread"
        torch.set_num_threads(2)
        assert cpu_threads() == "2 threads"
    finally:
        torch.set_num_threads(before)
