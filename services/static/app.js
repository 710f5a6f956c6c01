// The search page: calls GET /search?relevance=true and draws each hit's moments and relevance curve.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const VIEW_W = 1000;
const VIEW_H = 46;
const KEY_STORE = "prvr-api-key";

const $ = (id) => document.getElementById(id);

function apiHeaders() {
  const key = sessionStorage.getItem(KEY_STORE);
  return key ? { "X-API-Key": key } : {};
}

function formatTime(seconds, precise = false) {
  // m:ss, with tenths when precise and the time is not a whole second
  const total = Math.max(0, seconds);
  const tenths = Math.round(total * 10) / 10;
  const whole = precise && Math.abs(tenths - Math.round(tenths)) > 1e-6 ? tenths : Math.round(total);
  const minutes = Math.floor(whole / 60);
  const rest = whole - minutes * 60;
  const text = Number.isInteger(rest) ? String(rest) : rest.toFixed(1);
  return `${minutes}:${rest < 10 ? "0" : ""}${text}`;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function svg(tag, attributes) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  return node;
}

function setStatus(message, isError = false) {
  const status = $("status");
  status.textContent = message;
  status.classList.toggle("error", isError);
}

async function readError(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (_) { /* not JSON */ }
  return `HTTP ${response.status}`;
}

// ------------------------------------------------------------------------------------------ timeline

function curvePath(relevance) {
  // relevance: F values over [0, duration]; drawn min-max normalised (its shape, not its scale, matters here)
  const low = Math.min(...relevance);
  const high = Math.max(...relevance);
  const span = high - low > 1e-9 ? high - low : 1;
  const step = VIEW_W / relevance.length;
  const points = relevance.map((value, i) => {
    const x = (i + 0.5) * step;
    const y = VIEW_H - 3 - ((value - low) / span) * (VIEW_H - 10);
    return [x, y];
  });
  const line = points.map(([x, y], i) => `${i ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
  const fill = `M0,${VIEW_H} L0,${points[0][1].toFixed(1)} ${line.replace(/^M/, "L")} ` +
    `L${VIEW_W},${points[points.length - 1][1].toFixed(1)} L${VIEW_W},${VIEW_H} Z`;
  return { line, fill };
}

function buildTimeline(hit, seek) {
  const wrap = el("div", "timeline");
  const root = svg("svg", { viewBox: `0 0 ${VIEW_W} ${VIEW_H}`, preserveAspectRatio: "none", role: "img",
    "aria-label": `timeline of ${hit.video_id}` });
  root.appendChild(svg("rect", { class: "track", x: 0, y: 0, width: VIEW_W, height: VIEW_H, rx: 6 }));
  if (hit.relevance && hit.relevance.length > 1) {
    const { line, fill } = curvePath(hit.relevance);
    root.appendChild(svg("path", { class: "curve-fill", d: fill }));
    root.appendChild(svg("path", { class: "curve-line", d: line, "vector-effect": "non-scaling-stroke" }));
  }
  // draw the best moment last so that it stays on top
  [...hit.moments].reverse().forEach((moment, reversedIndex) => {
    const best = reversedIndex === hit.moments.length - 1;
    const x = (moment.start_sec / hit.duration) * VIEW_W;
    const width = Math.max(3, ((moment.end_sec - moment.start_sec) / hit.duration) * VIEW_W);
    const rect = svg("rect", { class: best ? "moment best" : "moment", x: x.toFixed(1), y: 2, width: width.toFixed(1),
      height: VIEW_H - 4, rx: 3, "vector-effect": "non-scaling-stroke" });
    const title = svg("title", {});
    title.textContent = `${formatTime(moment.start_sec, true)} – ${formatTime(moment.end_sec, true)} · confidence ${moment.score.toFixed(2)}`;
    rect.appendChild(title);
    rect.addEventListener("click", (event) => { event.stopPropagation(); seek(moment.start_sec, moment.end_sec); });
    root.appendChild(rect);
  });
  const playhead = svg("line", { class: "playhead", x1: -10, x2: -10, y1: 0, y2: VIEW_H, "vector-effect": "non-scaling-stroke" });
  root.appendChild(playhead);
  root.addEventListener("click", (event) => {
    const box = root.getBoundingClientRect();
    seek(((event.clientX - box.left) / box.width) * hit.duration, null);
  });
  wrap.appendChild(root);
  const axis = el("div", "axis");
  for (const fraction of [0, 0.25, 0.5, 0.75, 1]) axis.appendChild(el("span", "", formatTime(fraction * hit.duration)));
  wrap.appendChild(axis);
  wrap.movePlayhead = (seconds) => {
    const x = (seconds / hit.duration) * VIEW_W;
    playhead.setAttribute("x1", x.toFixed(1));
    playhead.setAttribute("x2", x.toFixed(1));
  };
  return wrap;
}

// ------------------------------------------------------------------------------------------ result cards

function buildCard(hit) {
  const card = el("li", "card");
  card.dataset.videoId = hit.video_id;
  const head = el("div", "card-head");
  head.appendChild(el("span", "rank", String(hit.rank)));
  head.appendChild(el("span", "video-id", hit.video_id));
  const meta = el("span", "meta");
  const score = el("span", "", "score ");
  score.appendChild(el("b", "", hit.score.toFixed(3)));
  meta.appendChild(score);
  if (hit.duration !== null) {
    const length = el("span", "", "duration ");
    length.appendChild(el("b", "", formatTime(hit.duration, true)));
    meta.appendChild(length);
  }
  head.appendChild(meta);
  card.appendChild(head);

  let video = null;
  let stopAt = null;
  const seek = (start, end) => {
    if (!video) return;
    stopAt = end;
    video.currentTime = start;
    video.play().catch(() => { /* autoplay refused: the position is still set */ });
  };

  let timeline = null;
  if (hit.duration) {
    timeline = buildTimeline(hit, seek);
    card.appendChild(timeline);
  }
  if (hit.moments.length) {
    const chips = el("div", "moments");
    hit.moments.forEach((moment, i) => {
      const chip = el("button", hit.media_url ? "chip" : "chip static",
        `${i === 0 ? "★ " : ""}${formatTime(moment.start_sec, true)} – ${formatTime(moment.end_sec, true)} · ${moment.score.toFixed(2)}`);
      chip.type = "button";
      chip.title = hit.media_url ? "play this moment" : "no local video file for this result";
      chip.addEventListener("click", () => seek(moment.start_sec, moment.end_sec));
      chips.appendChild(chip);
    });
    card.appendChild(chips);
  } else {
    card.appendChild(el("p", "no-moments", "no moments predicted for this video"));
  }
  if (hit.media_url) {
    const player = el("div", "player");
    video = document.createElement("video");
    video.controls = true;
    video.preload = "metadata";
    video.src = hit.media_url;
    video.addEventListener("timeupdate", () => {
      if (timeline) timeline.movePlayhead(video.currentTime);
      if (stopAt !== null && video.currentTime >= stopAt) { video.pause(); stopAt = null; }
    });
    player.appendChild(video);
    card.appendChild(player);
  }
  return card;
}

// ------------------------------------------------------------------------------------------ search

async function runSearch(query, k) {
  const button = $("search-button");
  button.disabled = true;
  setStatus("Searching…");
  const params = new URLSearchParams({ q: query, k: String(k), relevance: "true" });
  try {
    const response = await fetch(`/search?${params}`, { headers: apiHeaders() });
    if (response.status === 401) {
      $("key-form").hidden = false;
      setStatus("This server needs an API key: enter it above.", true);
      return;
    }
    if (!response.ok) {
      setStatus(await readError(response), true);
      return;
    }
    const body = await response.json();
    const list = $("results");
    list.replaceChildren(...body.results.map(buildCard));
    const noun = body.results.length === 1 ? "video" : "videos";
    setStatus(`${body.results.length} ${noun} for “${body.query}” · ${body.took_ms.toFixed(0)} ms · generation ${body.generation}`);
    history.replaceState(null, "", `?${new URLSearchParams({ q: query, k: String(k) })}`);
  } catch (error) {
    setStatus(`Search failed: ${error.message}`, true);
  } finally {
    button.disabled = false;
  }
}

async function showIndexInfo() {
  try {
    const response = await fetch("/health");
    if (!response.ok) throw new Error(await readError(response));
    const health = await response.json();
    $("index-info").textContent =
      `${health.num_videos.toLocaleString()} videos · index ${health.generation_directory} (generation ${health.generation})`;
  } catch (error) {
    $("index-info").textContent = `index unavailable: ${error.message}`;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  showIndexInfo();
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const query = $("query").value.trim();
    if (!query) { setStatus("Type what happens in the moment you are looking for.", true); return; }
    runSearch(query, Number($("k").value));
  });
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORE, $("api-key").value);
    $("key-form").hidden = true;
    const query = $("query").value.trim();
    if (query) runSearch(query, Number($("k").value));
  });
  const params = new URLSearchParams(location.search);
  if (params.get("q")) {
    $("query").value = params.get("q");
    if (params.get("k")) $("k").value = params.get("k");
    runSearch(params.get("q"), Number($("k").value));
  }
});
