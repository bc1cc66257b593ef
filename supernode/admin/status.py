"""The status page (`GET /` on the admin port): one HTML page, no build step and no
assets from elsewhere, that reads the admin API every second and shows tasks, peers,
bytes by source, a throughput chart and the cluster's supernodes."""

from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>dragonfly-py supernode</title>
<style>
  body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
  h1 { font-size: 1.3em; } h2 { font-size: 1.05em; margin-top: 1.5em; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: .25em .6em; border-bottom: 1px solid #ddd; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  .totals span { margin-right: 2em; } #error { color: #b00; }
  canvas { border: 1px solid #ddd; width: 100%; height: 160px; }
</style>
</head>
<body>
<h1>dragonfly-py supernode <small id="version"></small></h1>
<p id="error"></p>
<p class="totals">
  <span>from origins: <b id="origin">-</b></span>
  <span>by the CDN: <b id="cdn">-</b></span>
  <span>between peers: <b id="peers-bytes">-</b></span>
</p>
<canvas id="chart" width="900" height="160"></canvas>
<p><small>MiB/s, last 2 minutes: origin (blue), CDN (orange), peers (green)</small></p>
<h2>Tasks</h2>
<table><thead><tr><th>task</th><th>url</th><th>state</th><th>pieces</th>
<th>length</th><th>peers</th><th>from CDN</th><th>from peers</th><th>owner</th></tr></thead>
<tbody id="tasks"></tbody></table>
<h2>Peers</h2>
<table><thead><tr><th>peer</th><th>address</th><th>tasks</th><th>uploads</th>
<th>failures</th><th>speed</th></tr></thead><tbody id="peers"></tbody></table>
<h2>Supernodes <small id="redis"></small></h2>
<table><thead><tr><th>id</th><th>peer</th><th>admin</th><th>last heartbeat</th></tr></thead>
<tbody id="supernodes"></tbody></table>
<script>
"use strict";
const history = [];
let last = null;

function size(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function cell(row, text, numeric) {
  const td = row.insertCell();
  td.textContent = text;
  if (numeric) td.className = "num";
}

function metric(text, name) {
  const line = text.split("\\n").find(l => l.startsWith(name + " "));
  return line ? parseFloat(line.split(" ")[1]) : 0;
}

function draw() {
  const canvas = document.getElementById("chart");
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  const top = Math.max(1, ...history.flatMap(p => [p.origin, p.cdn, p.peers]));
  [["origin", "#1f77b4"], ["cdn", "#ff7f0e"], ["peers", "#2ca02c"]].forEach(([key, color]) => {
    g.strokeStyle = color;
    g.beginPath();
    history.forEach((p, i) => {
      const x = canvas.width - (history.length - 1 - i) * (canvas.width / 120);
      const y = canvas.height - 4 - (p[key] / top) * (canvas.height - 8);
      i ? g.lineTo(x, y) : g.moveTo(x, y);
    });
    g.stroke();
  });
}

async function refresh() {
  try {
    const [tasks, peers, metrics, cluster] = await Promise.all([
      fetch("/api/v1/tasks?limit=1000").then(r => r.json()),
      fetch("/api/v1/peers").then(r => r.json()),
      fetch("/metrics").then(r => r.text()),
      fetch("/api/v1/supernodes").then(r => r.json()),
    ]);
    const now = {
      t: Date.now() / 1000,
      origin: metric(metrics, "supernode_origin_bytes_total"),
      cdn: metric(metrics, "supernode_cdn_uploaded_bytes_total"),
      peers: metric(metrics, 'supernode_reported_bytes{source="peers"}'),
    };
    document.getElementById("origin").textContent = size(now.origin);
    document.getElementById("cdn").textContent = size(now.cdn);
    document.getElementById("peers-bytes").textContent = size(now.peers);
    if (last) {
      const dt = Math.max(now.t - last.t, 0.001), mib = 1048576;
      history.push({
        origin: Math.max(0, now.origin - last.origin) / dt / mib,
        cdn: Math.max(0, now.cdn - last.cdn) / dt / mib,
        peers: Math.max(0, now.peers - last.peers) / dt / mib,
      });
      if (history.length > 120) history.shift();
      draw();
    }
    last = now;
    const body = document.getElementById("tasks");
    body.replaceChildren();
    for (const task of tasks.tasks) {
      const row = body.insertRow();
      row.dataset.task = task.id;
      cell(row, task.id.slice(0, 16));
      cell(row, task.url);
      cell(row, task.state);
      cell(row, task.pieces_ready + " / " + (task.piece_count ?? "?"), true);
      cell(row, size(task.length), true);
      cell(row, task.peers.length, true);
      cell(row, size(task.bytes_from_cdn), true);
      cell(row, size(task.bytes_from_peers), true);
      cell(row, task.owner + (task.adopted_from ? " (adopted from " + task.adopted_from.owner
        + ")" : ""));
    }
    const peerBody = document.getElementById("peers");
    peerBody.replaceChildren();
    for (const peer of peers.peers) {
      const row = peerBody.insertRow();
      row.dataset.peer = peer.id;
      cell(row, peer.id);
      cell(row, peer.address ?? "(no uploads)");
      cell(row, peer.tasks.length, true);
      cell(row, peer.uploads_in_flight + " / " + peer.upload_slots, true);
      cell(row, peer.failures, true);
      cell(row, size(peer.recent_speed) + "/s", true);
    }
    document.getElementById("redis").textContent = cluster.cluster === null ? "(no cluster)"
      : cluster.cluster + ": Redis " + cluster.redis + ", "
        + cluster.heartbeat_failures + " failed heartbeats, "
        + cluster.failovers + " tasks adopted from a dead owner";
    const nodeBody = document.getElementById("supernodes");
    nodeBody.replaceChildren();
    for (const node of cluster.supernodes) {
      const row = nodeBody.insertRow();
      row.dataset.supernode = node.id;
      cell(row, node.id + (node.self ? " (this one)" : ""));
      cell(row, node.peer);
      cell(row, node.admin ?? "-");
      cell(row, node.heartbeat_age === null ? "-" : node.heartbeat_age.toFixed(1) + " s ago", true);
    }
    document.getElementById("error").textContent = "";
  } catch (e) {
    document.getElementById("error").textContent = "cannot reach the admin API: " + e;
  }
}

fetch("/version").then(r => r.json()).then(v => {
  document.getElementById("version").textContent = v.version;
});
refresh();
setInterval(refresh, 1000);
</script>
</body>
</html>
"""
