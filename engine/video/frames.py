"""Frames in and frames out: videos, image files and cameras as one source of RGB frames, and a video writer.

A frame's index is its 0-based position in its video (counted before any range or stride is applied), the
same index a per-frame detection file uses as ``image_id`` and the outputs write as ``frame``.

Reading stops early in two ways that are told apart: a range or stride that is done (normal), and a video
whose decoder gives up before the frame count its header announced (a truncated or damaged file). The
second keeps every frame read so far, says at which frame it broke off (``VideoSource.broken_at``), and is
an error only when not a single frame could be read.

Orientation: OpenCV turns a phone video by its rotation metadata while decoding (``CAP_PROP_ORIENTATION_AUTO``,
on by default with FFmpeg), so frames, the CSV and the JSON are in the upright grid a player shows, the grid
DeepLabCut (which reads videos through OpenCV too) labels frames on. Still images listed here are read by
``datasets.image_io`` (EXIF orientation, 16 bits, alpha, several frames: docs/formats.md, "Image files").
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterator

import cv2
import numpy as np

from datasets.image_io import IMAGE_EXTENSIONS
from models.errors import InputError

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm")

_REENCODE_HINT = ("re-encode it to H.264 (ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4) or extract frames "
                  "(ffmpeg -i IN frames/%06d.png) and pass the folder")


class MissingInputError(InputError, FileNotFoundError):
    """An ``--input`` (or video) that does not exist; also a FileNotFoundError for callers that catch that."""


def is_video(path: str) -> bool:
    return path.lower().endswith(VIDEO_EXTENSIONS)


def is_camera(spec: str) -> bool:
    """A camera is given by its index (``--input 0``)."""
    return spec.isdigit() and not os.path.exists(spec)


def split_inputs(spec: str) -> tuple[list[str], list[str]]:
    """``(images, videos)`` named by ``--input``: a file, a folder (images and videos mixed, not recursive), a
    glob pattern, or a camera index (returned as a one-element video list, e.g. ``["0"]``). Sorted by name.

    Raises InputError when nothing usable is named."""
    if is_camera(spec):
        return [], [spec]
    if os.path.isdir(spec):
        files = [os.path.join(spec, f) for f in os.listdir(spec)]
    elif any(c in spec for c in "*?["):
        files = glob.glob(spec, recursive=True)
    elif os.path.isfile(spec):
        if not spec.lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS):
            raise InputError(f"--input {spec}: not an image ({', '.join(IMAGE_EXTENSIONS)}) or a video "
                             f"({', '.join(VIDEO_EXTENSIONS)}); rename it or convert it to one of these")
        files = [spec]
    else:
        raise MissingInputError(f"--input {spec!r} is neither an image, a video, a folder, a glob that matches "
                                f"files nor a camera index; check the path")
    images = sorted(f for f in files if f.lower().endswith(IMAGE_EXTENSIONS))
    videos = sorted(f for f in files if is_video(f))
    if not images and not videos:
        raise MissingInputError(f"--input {spec!r} contains no images ({', '.join(IMAGE_EXTENSIONS)}) and no videos "
                                f"({', '.join(VIDEO_EXTENSIONS)})")
    return images, videos


class VideoSource:
    """RGB uint8 frames ``[H, W, 3]`` of a video file or a camera, with a frame range and a stride.

    Args:
        spec: a video path, or a camera index as a string or int.
        start: first frame index to yield.
        stop: stop before this frame index (None: to the end; a camera runs until ``stop`` or Ctrl-C).
        stride: yield every ``stride``-th frame from ``start``.

    Attributes after opening: ``fps`` (the container's, 30 when it does not say), ``size`` ``(W, H)``,
    ``frame_count`` (the header's count, None for cameras and when unknown). After iterating:
    ``frames_read`` and ``broken_at`` (the index of the first frame that could not be decoded before the
    announced end, else None).
    """

    def __init__(self, spec: str | int, start: int = 0, stop: int | None = None, stride: int = 1):
        if start < 0 or stride < 1 or (stop is not None and stop <= start):
            raise InputError(f"frame range start={start}, stop={stop}, stride={stride}: need 0 <= start < stop "
                             f"and stride >= 1 (--start-frame, --end-frame, --frame-stride)")
        self.spec = str(spec)
        self.camera = isinstance(spec, int) or is_camera(self.spec)
        self.start, self.stop, self.stride = start, stop, stride
        if self.camera:
            self.cap = cv2.VideoCapture(int(spec))
            if not self.cap.isOpened():
                raise InputError(f"camera {spec} does not open: check that it is connected and not used by "
                                 f"another program, or pass another index (--input 1)")
        else:
            if not os.path.isfile(self.spec):
                raise MissingInputError(f"video {self.spec} does not exist; check the path")
            self.cap = cv2.VideoCapture(self.spec)
            if not self.cap.isOpened():
                raise InputError(f"video {self.spec} cannot be opened by this OpenCV build (unreadable file or a "
                                 f"codec it cannot decode); {_REENCODE_HINT}")
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and np.isfinite(fps) and fps > 0 else 30.0
        self.size = (int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        count = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT)) if not self.camera else 0
        self.frame_count = count if count > 0 else None
        if self.frame_count is not None and start >= self.frame_count:
            self.cap.release()
            raise InputError(f"video {self.spec} has {self.frame_count} frames; --start-frame {start} is past its "
                             f"end")
        self.frames_read = 0
        self.broken_at: int | None = None

    @property
    def name(self) -> str:
        return f"camera{self.spec}" if self.camera else os.path.splitext(os.path.basename(self.spec))[0]

    def expected_frames(self) -> int | None:
        """How many frames the range and stride will yield, when the length is known (for progress bars)."""
        end = self.frame_count if self.stop is None else (
            self.stop if self.frame_count is None else min(self.stop, self.frame_count))
        if end is None:
            return None
        return max(0, (end - self.start + self.stride - 1) // self.stride)

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yields ``(frame index, RGB frame)``. Raises InputError if no frame at all could be read."""
        index = 0
        if self.start and not self.camera:
            # Seeking is exact for the usual intra-coded starts and falls back to decoding otherwise.
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, self.start)
            index = int(self.cap.get(cv2.CAP_PROP_POS_FRAMES))
        try:
            while self.stop is None or index < self.stop:
                ok = self.cap.grab()
                if not ok:
                    break
                if index >= self.start and (index - self.start) % self.stride == 0:
                    ok, bgr = self.cap.retrieve()
                    if not ok or bgr is None:
                        break
                    self.frames_read += 1
                    yield index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                index += 1
        finally:
            self.cap.release()
        end = self.frame_count if self.stop is None or self.frame_count is None else min(self.stop, self.frame_count)
        if not self.camera and end is not None and index < end:
            self.broken_at = index
            if self.frames_read == 0:
                raise InputError(f"video {self.spec}: no frame could be decoded (it breaks off at frame {index} of "
                                 f"{self.frame_count}); {_REENCODE_HINT}")
            log.warning("video %s breaks off at frame %d of the %d its header announces; kept the %d frames read "
                        "before it", self.spec, index, self.frame_count, self.frames_read)
        elif self.frames_read == 0:
            raise InputError(f"{'camera' if self.camera else 'video'} {self.spec}: no frame could be read "
                             f"(empty or unreadable); {_REENCODE_HINT if not self.camera else 'check the camera'}")


class VideoWriter:
    """An MP4 (``mp4v``) writer of RGB uint8 frames at the input's frame rate and size, opened on the first frame.

    Every frame must have the size of the first one (the input's): a mismatch is a bug and raises.
    """

    def __init__(self, path: str, fps: float, fourcc: str = "mp4v"):
        self.path = path
        self.fps = float(fps)
        self.fourcc = fourcc
        self._writer = None
        self.size: tuple[int, int] | None = None
        self.frames_written = 0

    def write(self, rgb: np.ndarray) -> None:
        h, w = rgb.shape[:2]
        if self._writer is None:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self._writer = cv2.VideoWriter(self.path, cv2.VideoWriter_fourcc(*self.fourcc), self.fps, (w, h))
            if not self._writer.isOpened():
                raise InputError(f"cannot write video {self.path} with codec {self.fourcc!r} in this OpenCV build; "
                                 f"choose another output folder or file type")
            self.size = (w, h)
        elif (w, h) != self.size:
            raise ValueError(f"frame of size {(w, h)} written to {self.path}, which was opened at {self.size}")
        self._writer.write(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
        self.frames_written += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
