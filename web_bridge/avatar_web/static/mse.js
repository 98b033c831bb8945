// Appends the streamed fMP4 init and media segments to one MediaSource SourceBuffer, in order.

const KEEP_BEHIND_S = 30;

/** One SourceBuffer fed through a queue so appends never overlap; reset() starts afresh. */
export class MseSink {
  constructor(video) {
    this.video = video;
    this.MediaSourceClass = window.ManagedMediaSource || window.MediaSource;
    this.appended = 0;
    this.errors = [];
    this.mediaSource = null;
  }

  static supported(mime) {
    const cls = window.ManagedMediaSource || window.MediaSource;
    return Boolean(cls && cls.isTypeSupported(mime));
  }

  /** Detaches the old MediaSource (if any) and attaches a new empty one. */
  reset() {
    if (this.video.src.startsWith("blob:")) URL.revokeObjectURL(this.video.src);
    this.queue = [];
    this.sourceBuffer = null;
    this.mime = null;
    this.ready = false;
    const mediaSource = new this.MediaSourceClass();
    this.mediaSource = mediaSource;
    if (window.ManagedMediaSource) this.video.disableRemotePlayback = true;
    mediaSource.addEventListener("sourceopen", () => {
      if (this.mediaSource !== mediaSource) return;
      this.ready = true;
      this.pump();
    }, { once: true });
    this.video.src = URL.createObjectURL(mediaSource);
  }

  /** Queues an init segment (creates the SourceBuffer, or switches type if it changed). */
  appendInit(mime, data) {
    return this.enqueue({ op: "init", mime, data });
  }

  /** Queues a media segment; resolves once it is in the buffer. */
  appendSegment(data) {
    return this.enqueue({ op: "media", data });
  }

  /** Jobs waiting or running. */
  get pending() {
    return this.queue?.length ?? 0;
  }

  /** End of the last buffered range (the newest media: the turn being played). */
  bufferedEnd() {
    const ranges = this.sourceBuffer?.buffered ?? this.video.buffered;
    return ranges.length ? ranges.end(ranges.length - 1) : 0;
  }

  /**
   * Start of the next buffered range after `t`, or null: null too while more than `slack`
   * seconds are buffered at `t` (playback stalls a little before a range's end).
   */
  nextBufferedStart(t, slack) {
    const ranges = this.sourceBuffer?.buffered ?? this.video.buffered;
    for (let i = 0; i < ranges.length; i += 1) {
      if (ranges.start(i) > t) return ranges.start(i);
      if (t < ranges.end(i) - slack) return null;
    }
    return null;
  }

  enqueue(job) {
    return new Promise((resolve, reject) => {
      this.queue.push({ ...job, resolve, reject });
      this.pump();
    });
  }

  pump() {
    if (!this.ready || !this.queue.length) return;
    if (this.sourceBuffer?.updating) return;
    const job = this.queue[0];
    try {
      if (job.op === "init" && !this.sourceBuffer) {
        this.sourceBuffer = this.mediaSource.addSourceBuffer(job.mime);
        this.sourceBuffer.mode = "segments";
        this.mime = job.mime;
        this.sourceBuffer.addEventListener("updateend", () => this.finish(null));
        this.sourceBuffer.addEventListener("error", () => this.finish(new Error("append failed")));
      } else if (job.op === "init" && job.mime !== this.mime && this.sourceBuffer.changeType) {
        this.sourceBuffer.changeType(job.mime);
        this.mime = job.mime;
      }
      if (!this.sourceBuffer) throw new Error("media segment before the init segment");
      if (job.op === "trim") this.sourceBuffer.remove(job.start, job.end);
      else this.sourceBuffer.appendBuffer(job.data);
    } catch (error) {
      if (error.name === "QuotaExceededError" && !job.retried) {
        job.retried = true;
        const end = Math.max(0, this.video.currentTime - 2);
        if (end > 0) {
          this.queue.unshift({ op: "trim", start: 0, end, resolve() {}, reject() {} });
          this.pump();
          return;
        }
      }
      this.queue.shift();
      this.errors.push(String(error));
      job.reject(error);
      this.pump();
    }
  }

  finish(error) {
    const job = this.queue.shift();
    if (!job) return;
    if (error) {
      this.errors.push(String(error));
      job.reject(error);
    } else {
      if (job.op === "media") this.appended += 1;
      job.resolve();
      this.trimIfLong();
    }
    this.pump();
  }

  /** Keeps memory bounded: drops media more than KEEP_BEHIND_S behind the playhead. */
  trimIfLong() {
    const ranges = this.sourceBuffer?.buffered;
    const behind = this.video.currentTime - KEEP_BEHIND_S;
    if (ranges?.length && ranges.start(0) < behind - 10 && !this.queue.some((j) => j.op === "trim")) {
      this.queue.push({ op: "trim", start: 0, end: behind, resolve() {}, reject() {} });
    }
  }
}
