// labkit's charts in the browser: plotly.js fed by snapshots and deltas from the kernel.
// One view serves chart.py's StreamChart (a snapshot, then deltas) and FigureView (snapshots
// only: a new figure comes as a snapshot for every view).
//
// This module stays a few KB on purpose: anywidget 0.11 drops every kernel message for a
// widget whose ESM takes more than 2 s to load, which is what blanked plotly's 5 MB
// FigureWidget. plotly.js (the plotly package's own plotly.min.js, so it works offline)
// is asked of the kernel once per page instead. Each view asks for a full snapshot when
// it renders (a new view, a page reload) and after any missed delta, so it can always
// redraw the whole state; deltas then append points with Plotly.extendTraces.
// Flow control: the view acknowledges each snapshot and delta once drawn, and the kernel sends
// the next delta only then (merging what came meanwhile), so no queue of updates grows in the
// kernel, the server or the page however fast events arrive.

const RETRY_MS = 3000;

function plotlyFrom(source) {
  // plotly.min.js is UMD: hand it a `module` so it returns Plotly; keep any page-wide Plotly.
  const module = { exports: {} };
  const before = window.Plotly;
  new Function("module", "exports", source + "\n//# sourceURL=labkit-plotly.min.js")(module, module.exports);
  if (before !== undefined) window.Plotly = before;
  return module.exports;
}

function render({ model, el }) {
  const view = Math.random().toString(36).slice(2);
  const box = document.createElement("div");
  box.className = "labkit-chart";
  const status = document.createElement("div");
  status.className = "labkit-chart-status";
  status.style.cssText = "font-size:90%;color:#666;min-height:1.4em";
  status.textContent = "loading the chart…";
  const plot = document.createElement("div");
  box.append(status, plot);
  el.append(box);

  let Plotly = globalThis.__labkitPlotly;
  let seq = null; // the last delta applied; null until a snapshot is drawn
  let queued = []; // deltas that came before the snapshot
  let pending = null; // merged deltas waiting for the next animation frame
  let closed = false;
  let frames = 0;

  const ask = (type) => model.send({ type, view });
  const retry = setInterval(() => {
    if (!Plotly) ask("need-plotly");
    else if (seq === null) {
      status.textContent = "waiting for the kernel… (if this stays, run the chart's cell again)";
      ask("hello");
    }
  }, RETRY_MS);

  function draw(snapshot) {
    Plotly.react(plot, snapshot.traces, snapshot.layout, snapshot.config);
    seq = snapshot.seq;
    model.send({ type: "ack", seq, view }); // drawn: the kernel may send the next delta
    pending = null; // older than the snapshot
    status.textContent = "";
    const waiting = queued.filter((d) => d.seq > seq);
    queued = [];
    waiting.forEach(take);
  }

  function take(delta) {
    if (seq === null) {
      queued.push(delta);
      return;
    }
    if (delta.seq <= seq) return;
    if (delta.seq !== seq + 1) {
      seq = null; // a delta went missing: start again from a full snapshot
      pending = null;
      ask("hello");
      return;
    }
    seq = delta.seq;
    pending = pending ? merge(pending, delta) : delta;
    requestAnimationFrame(flush);
  }

  function merge(a, b) {
    const points = { ...a.points };
    for (const [index, [xs, ys]] of Object.entries(b.points)) {
      const [px, py] = points[index] || [[], []];
      const keep = -b.max_points; // a hidden tab draws no frames: keep only what would be shown
      points[index] = [px.concat(xs).slice(keep), py.concat(ys).slice(keep)];
    }
    return { ...b, points, traces: [...(a.traces || []), ...(b.traces || [])] };
  }

  function flush() {
    const delta = pending;
    pending = null;
    if (!delta || closed) return;
    if (delta.traces && delta.traces.length) Plotly.addTraces(plot, delta.traces);
    const indices = Object.keys(delta.points).map(Number);
    if (indices.length) {
      const x = indices.map((i) => delta.points[i][0]);
      const y = indices.map((i) => delta.points[i][1]);
      Plotly.extendTraces(plot, { x, y }, indices, delta.max_points);
    }
    Plotly.update(plot, delta.restyle.data, delta.restyle.layout, delta.restyle.traces);
    frames += 1;
    el.dataset.frames = String(frames); // frames drawn, for the browser test
    model.send({ type: "ack", seq: delta.seq, view }); // the kernel holds the next delta until this
  }

  function onMessage(msg, buffers) {
    if (closed) return;
    if (msg.type === "plotly-js" && !Plotly) {
      const bytes = buffers[0].buffer ? new Uint8Array(buffers[0].buffer, buffers[0].byteOffset, buffers[0].byteLength) : new Uint8Array(buffers[0]);
      Plotly = globalThis.__labkitPlotly = globalThis.__labkitPlotly || plotlyFrom(new TextDecoder().decode(bytes));
      status.textContent = "waiting for the kernel…";
      ask("hello");
    } else if (msg.type === "snapshot" && Plotly && (msg.view === view || msg.view === "*")) {
      draw(msg);
    } else if (msg.type === "delta" && Plotly) {
      take(msg);
    }
  }

  model.on("msg:custom", onMessage);
  if (Plotly) ask("hello");
  else {
    status.textContent = "loading plotly.js…";
    ask("need-plotly");
  }
  return () => {
    closed = true;
    clearInterval(retry);
    model.off("msg:custom", onMessage);
    if (Plotly) Plotly.purge(plot);
  };
}

export default { render };
