"""RingBuffer: FIFO order, wrap-around, labels, state_dict round trip, shape checks."""
import io

import pytest
import torch

from nnunet_semicl.modules.queues import RingBuffer


def _items(start, n, d=2):
    # item k is the row [k, k, ...]: its value tells its insertion rank
    return torch.arange(start, start + n, dtype=torch.float32).unsqueeze(1).repeat(1, d)


def _values(buf):
    items, _ = buf.get()
    return items[:, 0].tolist()


def test_empty_and_partial():
    b = RingBuffer(5, (2,))
    items, labels = b.get()
    assert len(b) == 0 and items.shape == (0, 2) and labels is None
    b.push(_items(0, 3))
    assert len(b) == 3 and _values(b) == [0, 1, 2]
    b.push(_items(3, 0))             # empty push is a no-op
    assert len(b) == 3 and int(b.ptr) == 3


def test_wrap_around_order():
    b = RingBuffer(5, (2,))
    b.push(_items(0, 3))
    b.push(_items(3, 4))             # 7 items pushed: keeps 2..6, oldest first
    assert len(b) == 5 and _values(b) == [2, 3, 4, 5, 6]
    assert int(b.ptr) == 2
    b.push(_items(7, 1))
    assert _values(b) == [3, 4, 5, 6, 7]
    for k in range(8, 20):           # many single pushes
        b.push(_items(k, 1))
    assert _values(b) == [15, 16, 17, 18, 19]


def test_push_more_than_size():
    b = RingBuffer(4, (3,))
    b.push(_items(0, 2, d=3))
    b.push(_items(2, 11, d=3))       # only the newest 4 survive
    assert len(b) == 4 and _values(b) == [9, 10, 11, 12]
    items, _ = b.get()
    assert items.shape == (4, 3)
    c = RingBuffer(4, (3,))
    c.push(_items(0, 10, d=3))       # into an empty buffer
    assert _values(c) == [6, 7, 8, 9]


def test_labels_follow_items():
    b = RingBuffer(4, (2,), with_labels=True)
    assert b.labels.tolist() == [-1, -1, -1, -1]
    b.push(_items(0, 3), torch.tensor([10, 11, 12]))
    items, labels = b.get()
    assert labels.tolist() == [10, 11, 12] and labels.dtype == torch.long
    b.push(_items(3, 3), torch.tensor([13, 14, 15], dtype=torch.int32))
    items, labels = b.get()
    assert items[:, 0].tolist() == [2, 3, 4, 5] and labels.tolist() == [12, 13, 14, 15]
    b.push(_items(6, 9), torch.arange(16, 25))
    items, labels = b.get()
    assert items[:, 0].tolist() == [11, 12, 13, 14] and labels.tolist() == [21, 22, 23, 24]


def test_multi_dim_items_and_dtype():
    b = RingBuffer(3, (2, 4), dtype=torch.float64)
    x = torch.randn(2, 2, 4)
    b.push(x)
    items, _ = b.get()
    assert items.dtype == torch.float64
    torch.testing.assert_close(items, x.double())


def test_reset():
    b = RingBuffer(3, (2,), with_labels=True)
    b.push(_items(0, 5), torch.arange(5))
    b.reset()
    items, labels = b.get()
    assert len(b) == 0 and items.shape == (0, 2) and labels.shape == (0,)
    assert int(b.ptr) == 0 and b.labels.tolist() == [-1, -1, -1]
    b.push(_items(0, 1), torch.tensor([7]))
    assert _values(b) == [0]


def test_reset_then_push_to_capacity_fills_in_storage_order():
    # how other code (e.g. the step benchmark) brings a buffer to its steady state without touching its fields
    b = RingBuffer(4, (2,), with_labels=True, dtype=torch.float16)
    b.push(_items(0, 3), torch.arange(3))
    b.reset()
    for start in (0, 2):
        b.push(_items(10 + start, 2), torch.arange(start, start + 2))
    view, offset = b.storage()
    assert len(b) == 4 and offset == 0 and int(b.ptr) == 0
    assert torch.equal(view, _items(10, 4).half()) and b.get()[1].tolist() == [0, 1, 2, 3]
    assert b.memory_bytes() == 4 * 2 * 2


def test_state_dict_round_trip():
    a = RingBuffer(5, (2,), with_labels=True)
    a.push(_items(0, 7), torch.arange(7) % 3)
    sd = a.state_dict()
    assert set(sd) == {"items", "labels", "ptr", "count"}
    b = RingBuffer(5, (2,), with_labels=True)
    b.load_state_dict(sd)
    assert len(b) == 5 and int(b.ptr) == int(a.ptr)
    ia, la = a.get()
    ib, lb = b.get()
    assert torch.equal(ia, ib) and torch.equal(la, lb)
    # continues identically after loading (resume)
    a.push(_items(7, 2), torch.tensor([1, 2]))
    b.push(_items(7, 2), torch.tensor([1, 2]))
    assert _values(b) == [4, 5, 6, 7, 8] and torch.equal(a.get()[1], b.get()[1])
    # a partially filled buffer too (state is not tied to "full")
    c, e = RingBuffer(5, (2,)), RingBuffer(5, (2,))
    c.push(_items(0, 2))
    e.load_state_dict(c.state_dict())
    assert _values(e) == [0, 1]
    # a buffer of a different size refuses the state
    with pytest.raises(RuntimeError):
        RingBuffer(6, (2,), with_labels=True).load_state_dict(sd)


def test_partly_filled_buffer_saves_only_its_filled_rows_and_restores_them():
    a = RingBuffer(1000, (4,), with_labels=True)
    a.push(_items(0, 3, d=4), torch.tensor([0, 2, 1]))
    sd = a.state_dict()
    assert sd["items"].shape == (3, 4) and sd["labels"].shape == (3,)
    assert sd["items"].untyped_storage().nbytes() == 3 * 4 * 4     # a copy, not a view of the 1000 rows
    buf = io.BytesIO()
    torch.save(sd, buf)
    assert buf.tell() < 4000                                        # the full buffer would be 16 kB of items
    buf.seek(0)
    b = RingBuffer(1000, (4,), with_labels=True)
    b.load_state_dict(torch.load(buf))
    assert b.items.shape == (1000, 4) and len(b) == 3 and int(b.ptr) == 3
    assert torch.equal(a.get()[0], b.get()[0]) and torch.equal(a.get()[1], b.get()[1])
    assert torch.equal(a.items, b.items) and torch.equal(a.labels, b.labels)   # unused rows as a fresh buffer
    a.push(_items(3, 2, d=4), torch.tensor([1, 1]))
    b.push(_items(3, 2, d=4), torch.tensor([1, 1]))
    assert torch.equal(a.get()[0], b.get()[0])
    # an empty buffer saves no rows; a full one saves all of them
    assert RingBuffer(1000, (4,)).state_dict()["items"].shape == (0, 4)
    full = RingBuffer(3, (4,))
    full.push(_items(0, 4, d=4))
    assert full.state_dict()["items"].shape == (3, 4)
    # a full buffer of 3 is not mistaken for a compact save of a larger one (ptr 1 != count 3)
    with pytest.raises(RuntimeError):
        RingBuffer(1000, (4,)).load_state_dict(full.state_dict())


def test_wrong_shapes_and_arguments_raise():
    with pytest.raises(ValueError):
        RingBuffer(0, (2,))
    b = RingBuffer(4, (2,))
    with pytest.raises(ValueError):
        b.push(torch.zeros(3, 3))
    with pytest.raises(ValueError):
        b.push(torch.zeros(3))
    with pytest.raises(ValueError):
        b.push(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long))   # labels on an unlabeled buffer
    bl = RingBuffer(4, (2,), with_labels=True)
    with pytest.raises(ValueError):
        bl.push(torch.zeros(3, 2))                                    # labels missing
    assert len(b) == 0 and len(bl) == 0                               # nothing was written


def test_labels_of_wrong_length_raise():
    bl = RingBuffer(4, (2,), with_labels=True)
    with pytest.raises((ValueError, RuntimeError)):
        bl.push(torch.zeros(3, 2), torch.tensor([5]))


def test_storage_view_maps_insertion_order_without_copy():
    b = RingBuffer(4, (1,))
    b.push(torch.arange(6.0)[:, None])          # 0..5 -> keeps 2,3,4,5 with wrap-around
    view, oldest = b.storage()
    assert view.data_ptr() == b.items.data_ptr()  # a view of the storage, not a copy
    ordered = torch.stack([view[(oldest + i) % len(view)] for i in range(len(b))])
    assert torch.equal(ordered, b.get()[0]) and ordered[:, 0].tolist() == [2.0, 3.0, 4.0, 5.0]
    c = RingBuffer(4, (1,))
    c.push(torch.ones(2, 1))
    assert c.storage()[0].shape == (2, 1) and c.storage()[1] == 0
