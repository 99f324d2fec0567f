// labkit's charts in the browser: plotly.js fed by snapshots and deltas from the kernel.
// One view serves chart.py's StreamChart (a snapshot, then deltas) and FigureView (snapshots
// only: a new figure comes as a snapshot for every view).
//
// This module stays a few KB on purpose: anywidget 0.11 drops every kernel message for a
// widget whose ESM takes more than 2 s to load, which is what blanked plotly's 5 MB
// FigureWidget. plotly.js (the plotly package's own plotly.min.js, so it works offline)
// is asked of the kernel once per page instead. Each view asks for a full snapshot when it
// renders (a new view, a page reload) and after any missed delta, so it can always redraw
// the whole state. The view keeps the figure (traces and layout) itself: a delta appends
// its points to the traces and sets attributes and layout in that copy, and the next
// animation frame draws it with one Plotly.react. (Plotly.extendTraces then Plotly.update
// redrew the whole figure twice a frame: 254 ms a frame with 5,000 points against 21 ms
// for one react with markers capped, in Chromium on a busy 2-core machine, 2026-12-04.)
// Flow control: the view acknowledges each snapshot and delta once drawn, and the kernel keeps
// at most a few deltas unacknowledged (chart.py's DELTAS_IN_FLIGHT), merging what comes meanwhile,
// so no queue of updates grows in the kernel, the server or the page however fast events arrive.

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
  let figure = null; // {traces, layout, config}: what the next frame draws
  let scheduled = false; // a frame is asked for and not drawn yet
  let closed = false;
  let frames = 0;
  let drawMs = 0;

  const ask = (type) => model.send({ type, view });
  const retry = setInterval(() => {
    if (!Plotly) ask("need-plotly");
    else if (seq === null) {
      status.textContent = "waiting for the kernel… (if this stays, run the chart's cell again)";
      ask("hello");
    }
  }, RETRY_MS);

  function draw(snapshot) {
    figure = { traces: snapshot.traces, layout: snapshot.layout, config: snapshot.config };
    seq = snapshot.seq;
    react(true);
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
      ask("hello");
      return;
    }
    seq = delta.seq;
    apply(delta);
    schedule();
  }

  function schedule() {
    if (!scheduled) {
      scheduled = true;
      requestAnimationFrame(() => react(false)); // deltas that come before the frame are drawn together
    }
  }

  function apply(delta) {
    const traces = figure.traces;
    traces.push(...(delta.traces || []));
    const keep = -delta.max_points; // a hidden tab draws no frames: keep only what would be shown
    for (const [index, [xs, ys]] of Object.entries(delta.points)) {
      const trace = traces[Number(index)];
      trace.x = trace.x.concat(xs).slice(keep); // new arrays: Plotly.react sees the trace changed
      trace.y = trace.y.concat(ys).slice(keep);
    }
    const { data, layout, traces: restyled } = delta.restyle;
    for (const [key, values] of Object.entries(data)) {
      restyled.forEach((index, i) => {
        if (values[i] === null) delete traces[index][key];
        else traces[index][key] = values[i];
      });
    }
    figure.layout = relayout(figure.layout, layout);
  }

  function relayout(layout, changes) {
    // plotly's dotted {"xaxis.range": [...]} changes, copying each object on the path (react compares copies)
    const result = { ...layout };
    for (const [path, value] of Object.entries(changes)) {
      const keys = path.split(".");
      const leaf = keys.pop();
      let node = result;
      for (const key of keys) node = node[key] = { ...(node[key] || {}) };
      node[leaf] = value;
    }
    return result;
  }

  function react(always) {
    scheduled = false;
    if (!figure || closed) return;
    if (model.get("paused") && !always) {
      // Paused (StreamChart's trait, set in the page by the Pause button): the deltas are kept, not drawn.
      model.send({ type: "ack", seq, view });
      return;
    }
    const began = performance.now();
    Plotly.react(plot, [...figure.traces], figure.layout, figure.config);
    drawMs += performance.now() - began;
    frames += 1;
    el.dataset.frames = String(frames); // frames drawn, for the browser test
    el.dataset.drawMs = drawMs.toFixed(0); // time spent in them, for the browser test
    model.send({ type: "ack", seq, view }); // drawn: the kernel may send the next delta
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

  const onPause = () => {
    if (!model.get("paused") && figure) schedule(); // resumed: draw what came while paused
  };
  model.on("msg:custom", onMessage);
  model.on("change:paused", onPause);
  if (Plotly) ask("hello");
  else {
    status.textContent = "loading plotly.js…";
    ask("need-plotly");
  }
  return () => {
    closed = true;
    clearInterval(retry);
    model.off("msg:custom", onMessage);
    model.off("change:paused", onPause);
    if (Plotly) Plotly.purge(plot);
  };
}

export default { render };
