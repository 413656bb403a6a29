"""FrameScheduler without ROS: latest-wins slots, round robin, batches and the bounded wait."""

import threading
import time

import numpy as np
import pytest

from flow2seg_ros.cameras import FrameScheduler


def _rgb(value, h=4, w=6):
    return np.full((h, w, 3), value, np.uint8)


def test_latest_wins_and_pairs_with_the_frame_received_before():
    s = FrameScheduler(['a'])
    assert s.put('a', _rgb(1), 1.0, 'h1') is False
    assert s.put('a', _rgb(2), 2.0, 'h2') is True
    assert s.put('a', _rgb(3), 3.0, 'h3') is True
    batch = s.take(timeout=1.0)
    (frame,) = batch
    assert (frame.camera, frame.stamp, frame.meta) == ('a', 3.0, 'h3')
    assert frame.prev[1] == 2.0 and frame.prev[0][0, 0, 0] == 2  # received, not processed
    assert s.slots['a'].stats.dropped == 2
    s.done(batch)
    assert s.take(timeout=0.01) is None  # nothing waits


def test_bgr_frames_are_flagged_and_their_previous_frame_matches_their_order():
    s = FrameScheduler(['a'])
    rgb = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    s.put('a', rgb, 1.0)
    s.put('a', rgb[..., ::-1].copy(), 2.0, bgr=True)  # the camera switched to bgr8
    (frame,) = batch = s.take(timeout=1.0)
    assert frame.bgr and frame.prev[1] == 1.0
    np.testing.assert_array_equal(frame.prev[0], rgb[..., ::-1])  # in the frame's order
    s.done(batch)
    s.put('a', rgb, 3.0)
    (frame,) = s.take(timeout=1.0)
    assert not frame.bgr
    np.testing.assert_array_equal(frame.prev[0], rgb)


def test_run_batch_tells_a_pipeline_about_bgr_frames_only():
    from flow2seg_ros.cameras import PendingFrame, run_batch
    calls = []

    class Pipe:
        def process(self, rgb, stamp, **kwargs):
            calls.append(kwargs)
            return 'result'

    for bgr in (False, True):
        frame = PendingFrame('a', _rgb(1), 1.0, None, None, 0.0, bgr)
        assert run_batch([frame], {'a': Pipe()}, {'a': ()}) == [(frame, 'result', None)]
    assert 'bgr' not in calls[0] and calls[1]['bgr'] is True


def test_round_robin_serves_every_camera_in_turn():
    s = FrameScheduler(['a', 'b', 'c'], max_batch=1)
    for name in 'abc':
        s.put(name, _rgb(0), 1.0)
    order = []
    for _ in range(3):
        batch = s.take(timeout=1.0)
        order.append(batch[0].camera)
        s.done(batch)
    assert order == ['a', 'b', 'c']
    # a flooding camera never gets two turns while another camera waits
    served = []
    s.put('b', _rgb(0), 2.0)
    for i in range(6):
        s.put('a', _rgb(0), 3.0 + i)
        if i == 3:
            s.put('c', _rgb(0), 3.0)
        batch = s.take(timeout=1.0)
        served.append(batch[0].camera)
        s.done(batch)
    assert served == ['a', 'b', 'a', 'c', 'a', 'a']


def test_waiting_frames_of_several_cameras_form_one_batch():
    s = FrameScheduler(['a', 'b', 'c'])
    s.put('b', _rgb(0), 1.0)
    s.put('c', _rgb(0), 1.0)
    batch = s.take(timeout=1.0)
    assert [f.camera for f in batch] == ['b', 'c']
    s.done(batch)
    s.put('a', _rgb(0), 2.0)
    s.put('b', _rgb(0), 2.0)
    s.put('c', _rgb(0), 2.0)
    batch = s.take(timeout=1.0)
    assert [f.camera for f in batch] == ['a', 'b', 'c']  # after c comes a
    s.done(batch)
    assert s.batch_sizes == {2: 1, 3: 1}
    assert s.slots['a'].stats.last_batch_size == 3


def test_batches_hold_one_key_and_at_most_max_batch():
    s = FrameScheduler(['a', 'b', 'c'], max_batch=2, key=lambda f: f.rgb.shape)
    s.put('a', _rgb(0, 4, 6), 1.0)
    s.put('b', _rgb(0, 8, 6), 1.0)
    s.put('c', _rgb(0, 4, 6), 1.0)
    batch = s.take(timeout=1.0)
    assert [f.camera for f in batch] == ['a', 'c']
    s.done(batch)
    assert [f.camera for f in s.take(timeout=1.0)] == ['b']


def test_bounded_wait_for_a_streaming_camera():
    s = FrameScheduler(['a', 'b'], batch_wait_s=0.5)
    # b has never sent a frame: nobody to wait for
    s.put('a', _rgb(0), 1.0)
    t0 = time.monotonic()
    batch = s.take(timeout=1.0)
    assert [f.camera for f in batch] == ['a']
    assert time.monotonic() - t0 < 0.4
    s.done(batch)
    # b streams: a's frame waits for b's, which comes 50 ms later
    s.put('b', _rgb(0), 1.0)
    s.done(s.take(timeout=1.0))
    s.put('a', _rgb(0), 2.0)
    later = threading.Timer(0.05, lambda: s.put('b', _rgb(0), 2.0))
    later.start()
    batch = s.take(timeout=1.0)
    later.join()
    assert [f.camera for f in batch] == ['a', 'b']
    s.done(batch)
    # b streams but sends nothing more: the wait ends at its bound
    s.put('a', _rgb(0), 3.0)
    t0 = time.monotonic()
    assert [f.camera for f in s.take(timeout=2.0)] == ['a']
    assert 0.45 <= time.monotonic() - t0 < 2.0


def test_drop_pending_stop_and_wait_idle():
    s = FrameScheduler(['a', 'b'])
    s.put('a', _rgb(0), 1.0)
    s.put('b', _rgb(0), 1.0)
    assert not s.wait_idle(0.01)
    assert s.drop_pending() == 2
    assert s.wait_idle(0.01)
    s.put('a', _rgb(0), 2.0)
    batch = s.take(timeout=1.0)
    assert batch[0].prev is None  # what was received before the drop is forgotten
    assert not s.wait_idle(0.01)  # a batch is in work
    s.done(batch)
    got = []
    waiter = threading.Thread(target=lambda: got.append(s.take()))
    waiter.start()
    s.stop()
    waiter.join(2.0)
    assert got == [None]


def test_a_camera_in_work_waits_for_its_frame_to_finish():
    """Two workers: a flooding camera in work does not keep the other worker from a slow one,
    and never has two frames in work."""
    s = FrameScheduler(['fast', 'slow'], max_batch=1)
    s.put('fast', _rgb(0), 1.0)
    first = s.take(timeout=1.0)
    s.put('fast', _rgb(0), 1.1)  # waits: its camera is in work
    assert s.take(timeout=0.05) is None
    s.put('slow', _rgb(0), 1.1)
    second = s.take(timeout=1.0)  # the second worker starts the slow camera's frame at once
    assert [f.camera for f in second] == ['slow']
    s.done(first)
    third = s.take(timeout=1.0)
    assert [(f.camera, f.stamp) for f in third] == [('fast', 1.1)]
    s.done(second)
    s.done(third)
    assert s.wait_idle(0.01)


def test_bad_arguments():
    with pytest.raises(ValueError, match='unique'):
        FrameScheduler(['a', 'a'])
    with pytest.raises(ValueError, match='>= 0'):
        FrameScheduler(['a'], batch_wait_s=-1.0)


def test_run_batch_equals_one_frame_at_a_time_and_isolates_failures(tiny_model):
    from flow2seg_ros.cameras import run_batch
    from flow2seg_ros.pipeline import FramePipeline, PipelineConfig

    model, card = tiny_model

    def pipelines():
        return {c: FramePipeline(PipelineConfig(device='cpu'), model=model, card=card)
                for c in 'ab'}

    batched, alone = pipelines(), pipelines()
    rng = np.random.default_rng(3)
    s = FrameScheduler(['a', 'b'])
    for k in range(3):
        frames = {'a': rng.integers(0, 256, (48, 64, 3), np.uint8),
                  'b': rng.integers(0, 256, (40, 72, 3), np.uint8)}
        for c, rgb in frames.items():
            s.put(c, rgb, 1.0 + 0.05 * k)
        batch = s.take(timeout=1.0)
        assert [f.camera for f in batch] == ['a', 'b']
        outcomes = run_batch(batch, batched, {'a': ('color_mask',), 'b': ()})
        s.done(batch)
        for (frame, result, error), c in zip(outcomes, 'ab'):
            assert frame.camera == c and error is None
            ref = alone[c].process(frames[c], frame.stamp, outputs=())
            np.testing.assert_array_equal(result.labels, ref.labels)
            assert result.reset_reason == ref.reset_reason == ('first' if k == 0 else None)
            assert (result.color_mask is not None) == (c == 'a')
    s.put('a', np.zeros((4, 4), np.uint8), 2.0)  # not an RGB frame
    s.put('b', rng.integers(0, 256, (40, 72, 3), np.uint8), 1.2)
    batch = s.take(timeout=1.0)
    (a, result_a, error_a), (b, result_b, error_b) = run_batch(batch, batched,
                                                               {'a': (), 'b': ()})
    assert result_a is None and 'RGB' in str(error_a)
    assert error_b is None and result_b.labels.shape == (40, 72)
