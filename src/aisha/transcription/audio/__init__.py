"""The audio side of transcription, on ffmpeg: probe, find silences, cut into pieces the API takes.

Every ffmpeg run is an async subprocess with a timeout, its stderr read line by line as it comes
(only a short tail is kept for error messages), and the process killed if the caller is cancelled.
Audio never enters Python's memory: each step reads a file on disk and writes one in a work dir,
so peak memory stays flat however long the recording is.

Every input is opened as ``file:<path>`` with ``-protocol_whitelist file`` and
``-format_whitelist``, so ffmpeg itself refuses to follow a playlist or a list of other files
(``hls``, ``concat``…), or to reach any other protocol, whatever a file says about itself.

The steps:

1. :func:`probe` reads the container header with ``ffmpeg -i`` (no ffprobe: the ``imageio-ffmpeg``
   wheel ships only ffmpeg). It refuses a file that is not a recording (a playlist, a concat list,
   an image sequence: see ``ALLOWED_DEMUXERS``), one with no audio stream, an empty or undecodable
   one, and one whose header says it is longer than the maximum, before anything is charged. The
   header's duration is only a claim: it prices the first hold, never the bill.
2. When the speech API reads the first audio stream's codec (see :func:`copy_format`),
   :func:`scan` decodes it cheaply (mono, 8 kHz, video never decoded) and runs ``silencedetect``
   on it; the length it decoded is the real length, the one charged. The pieces are then copied
   out of the original stream (:func:`cut_chunks`, no re-encoding): far less work than encoding,
   and the API hears the recording as it was. A piece that would still be over the API's size
   limit is re-encoded on its own.
3. Otherwise (a codec the API doesn't read, PCM, audio whose pieces would have to be short to
   fit the size limit, or timestamps that disagree with the samples decoded), :func:`normalize`
   decodes it once into mono 16 kHz Opus and finds the silences in the same pass; that file is cut.
4. :func:`plan_chunks` (pure) picks the cut points: near each target boundary, the middle of the
   longest silence in a window; where there is none, a hard cut, and the next chunk starts a little
   earlier so that no word is lost (the merge removes the words heard twice). A hard cut and the
   next chunk's start go to the middle of short gaps between words (the same silencedetect finds
   them), so that neither piece starts or ends inside a word. Copied cuts land on
   the nearest packet boundary (an MP3 or AAC frame, an Opus packet: tens of milliseconds), well
   inside a pause or the overlap.
"""

from aisha.transcription.audio.cut import (
    chunk_file_name,
    copy_format,
    cut_chunks,
    prepare_audio,
)
from aisha.transcription.audio.ffmpeg import FFmpegResult, find_ffmpeg, run_ffmpeg
from aisha.transcription.audio.plan import plan_chunks
from aisha.transcription.audio.probe import probe
from aisha.transcription.audio.silence import normalize, scan
from aisha.transcription.audio.types import (
    ALLOWED_DEMUXERS,
    MIN_AUDIO_SECONDS,
    AudioChunk,
    AudioConfig,
    AudioError,
    AudioErrorReason,
    AudioInfo,
    AudioStream,
    AudioTooLong,
    ChunkPlan,
    EmptyAudio,
    FFmpegError,
    FFmpegTimeout,
    NoAudioStream,
    NormalizedAudio,
    PieceFormat,
    PreparedAudio,
    ScannedAudio,
    Silence,
    UndecodableAudio,
    UnsupportedFormat,
)

__all__ = [
    "ALLOWED_DEMUXERS",
    "MIN_AUDIO_SECONDS",
    "AudioChunk",
    "AudioConfig",
    "AudioError",
    "AudioErrorReason",
    "AudioInfo",
    "AudioStream",
    "AudioTooLong",
    "ChunkPlan",
    "EmptyAudio",
    "FFmpegError",
    "FFmpegResult",
    "FFmpegTimeout",
    "NoAudioStream",
    "NormalizedAudio",
    "PieceFormat",
    "PreparedAudio",
    "ScannedAudio",
    "Silence",
    "UndecodableAudio",
    "UnsupportedFormat",
    "chunk_file_name",
    "copy_format",
    "cut_chunks",
    "find_ffmpeg",
    "normalize",
    "plan_chunks",
    "prepare_audio",
    "probe",
    "run_ffmpeg",
    "scan",
]
