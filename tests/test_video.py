"""A video's frames: which ones (as VLMEvalKit and lmms-eval sample them) and the frames themselves, decoded with
PyAV from a real clip made here, or read from a folder of pictures."""

import pytest

from evalfleet.data.video import FrameSampling, VideoError, folder_frames, frame_indices, video_frames


def clip(path, frames: int = 24, fps: int = 8):
    """A real MPEG-4 clip: frame i is a flat grey of level 10 * i, so a decoded frame tells which one it is."""
    av = pytest.importorskip("av")
    import numpy as np

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            picture = np.full((48, 64, 3), 10 * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def level(image) -> int:
    """Which frame of `clip` a decoded picture is (its grey level / 10)."""
    import numpy as np

    return round(float(np.asarray(image).mean()) / 10)


def test_frames_are_chosen_as_the_peers_choose_them():
    # VLMEvalKit's nframe: int(i * total / (nframe + 1)) for i = 1..nframe
    assert frame_indices(24, FrameSampling(nframe=3)) == [6, 12, 18]
    assert frame_indices(100, FrameSampling(nframe=4)) == [20, 40, 60, 80]
    # VLMEvalKit's fps: every video_fps / fps-th frame, as many as the duration holds
    assert frame_indices(24, FrameSampling(fps=2.0), video_fps=8.0) == [0, 4, 8, 12, 16, 20]
    # lmms-eval's max_frames_num caps it, evenly among them
    assert frame_indices(240, FrameSampling(fps=8.0, max_frames_num=4), video_fps=8.0) == [0, 60, 120, 180]
    # a clip shorter than the frames asked repeats frames, as both peers do
    assert frame_indices(2, FrameSampling(nframe=4)) == [0, 0, 1, 1]


def test_sampling_that_cannot_apply_is_refused_with_the_reason():
    with pytest.raises(VideoError, match="frame rate"):
        frame_indices(10, FrameSampling(fps=1.0))  # a folder of frames has no rate
    with pytest.raises(VideoError, match="no frames"):
        frame_indices(0, FrameSampling())
    with pytest.raises(VideoError, match="nframe"):
        frame_indices(10, FrameSampling(nframe=None))


def test_a_clip_is_decoded_at_the_sampled_frames(tmp_path):
    path = clip(tmp_path / "c.mp4")
    frames, indices, fps = video_frames(path, FrameSampling(nframe=3))
    assert indices == [6, 12, 18] and fps == 8.0
    assert [level(f) for f in frames] == [6, 12, 18]
    assert frames[0].mode == "RGB" and frames[0].size == (64, 48)
    frames, indices, _ = video_frames(path, FrameSampling(fps=2.0))
    assert [level(f) for f in frames] == indices == [0, 4, 8, 12, 16, 20]


def test_a_folder_of_frames_is_read_in_number_order(tmp_path):
    from PIL import Image

    for i in range(12):
        Image.new("RGB", (8, 8), (10 * i,) * 3).save(tmp_path / f"frame_{i}.png")
    assert [p.name for p in folder_frames(tmp_path)][:3] == ["frame_0.png", "frame_1.png", "frame_2.png"]
    frames, indices, fps = video_frames(tmp_path, FrameSampling(nframe=2))
    assert indices == [4, 8] and fps is None and [level(f) for f in frames] == [4, 8]


def test_a_file_that_is_not_a_video_names_itself(tmp_path):
    pytest.importorskip("av")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(VideoError, match="bad.mp4"):
        video_frames(bad, FrameSampling())
