"""A video's frames: which ones (as VLMEvalKit and lmms-eval sample them) and the frames themselves, decoded with
PyAV from a real clip made here, or read from a folder of pictures."""

import pytest

from evalfleet.data.video import VideoError, folder_frames, frame_indices, video_frames
from evalfleet.records import FrameSampling


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


def test_rows_carry_a_video_or_several_pictures_in_jsonl_csv_and_parquet(tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from evalfleet.config import DatasetConfig
    from evalfleet.data.load import load_samples

    clip(tmp_path / "c.mp4")
    (tmp_path / "frames").mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), (10 * i,) * 3).save(tmp_path / "frames" / f"{i}.png")
        Image.new("RGB", (8, 8)).save(tmp_path / f"p{i}.png")
    rows = [{"id": "a", "question": "what happens?", "video": "c.mp4"},
            {"id": "b", "question": "and here?", "video": "frames", "image": ["p0.png", "p1.png"]},
            {"id": "c", "question": "escape?", "video": "../c.mp4"},
            {"id": "d", "question": "gone?", "video": "gone.mp4"},
            {"id": "e", "question": "text?", "video": "p2.png"}]
    (tmp_path / "v.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = DatasetConfig(name="v", path=str(tmp_path / "v.jsonl"), frames={"fps": 2.0, "max_frames_num": 4})
    a, b, c, d, e = load_samples(ds, seed=0)
    assert a.video.path == str(tmp_path / "c.mp4") and a.video.frames == FrameSampling(8, 2.0, 4)
    assert a.video.where == f"{tmp_path / 'v.jsonl'}:1:video" and a.error is None
    frames, indices, _ = video_frames(a.video.path, a.video.frames)
    assert len(frames) == 4 and indices == [0, 4, 12, 16]  # 6 frames at 2 a second, 4 kept evenly
    assert b.video.path == str(tmp_path / "frames") and [i.path for i in b.images] == [
        str(tmp_path / "p0.png"), str(tmp_path / "p1.png")]
    assert "video path '../c.mp4' is outside the image folder" in c.error
    assert d.error.endswith(f"video: video not found: {tmp_path / 'gone.mp4'}")
    assert "is not a video file" in e.error
    # CSV: several pictures as a JSON list in one cell; parquet: a video path
    (tmp_path / "v.csv").write_text('id,question,image,video\n1,two?,"[""p0.png"", ""p3.png""]",c.mp4\n')
    (row,) = load_samples(DatasetConfig(name="c", path=str(tmp_path / "v.csv")), seed=0)
    assert len(row.images) == 2 and row.video.path.endswith("c.mp4") and row.error is None
    pq.write_table(pa.table({"question": ["q?"], "video": ["frames"]}), tmp_path / "v.parquet")
    (row,) = load_samples(DatasetConfig(name="p", path=str(tmp_path / "v.parquet")), seed=0)
    assert row.video.path == str(tmp_path / "frames") and row.video.frames.nframe == 8


def test_a_run_with_video_rows_is_refused_before_anything_is_written_and_the_store_keeps_videos(tmp_path):
    import json

    from evalfleet.config import parse_config
    from evalfleet.preflight import input_problems, read_datasets
    from evalfleet.store import Store
    from evalfleet.store.background import SampleWriter, ToStore

    clip(tmp_path / "c.mp4")
    (tmp_path / "v.jsonl").write_text(json.dumps({"id": "a", "question": "what happens?", "video": "c.mp4"}) + "\n")
    cfg = parse_config({"name": "t", "output_dir": str(tmp_path / "out"), "model": {"path": str(tmp_path)},
                        "datasets": [{"name": "v", "path": str(tmp_path / "v.jsonl")}]})
    data = read_datasets(cfg)
    problems = input_problems(cfg, data)
    assert any("1 rows carry a video (`fields.video: video`" in p and "do not take video yet" in p
               for p in problems), problems
    store = Store(tmp_path / "store.db")
    SampleWriter(store.path, [ToStore("v", data.samples["v"], [0], "k")]).wait()
    (video,) = store.db.execute("SELECT video FROM samples").fetchone()
    assert json.loads(video) == {"where": f"{tmp_path / 'v.jsonl'}:1:video", "path": str(tmp_path / "c.mp4"),
                                 "frames": {"nframe": 8, "fps": None, "max_frames_num": 32}}
    store.close()
