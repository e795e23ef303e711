// trackport console: a small single-page app over the HTTP API and the live feed.
// Everything a device sent is shown with textContent, never parsed as HTML.
"use strict";

const TOKEN_KEY = "trackport.token";
const STALE_SECONDS = 600;
const state = {token: null, grant: null, config: {tile_url: ""}, socket: null, lastId: null,
               view: null, devices: new Map()};

// -- small helpers ------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== null && value !== undefined && value !== false) node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fmt(value, digits) {
  if (value === null || value === undefined) return "";
  return typeof value === "number" && digits !== undefined ? value.toFixed(digits) : String(value);
}

function ago(iso) {
  if (!iso) return "never";
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 90) return `${Math.round(seconds)} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 129600) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} d ago`;
}

function deviceStatus(device) {
  if (!device.online) return "offline";
  const last = Date.parse(device.last_seen || "");
  return !isNaN(last) && (Date.now() - last) / 1000 > STALE_SECONDS ? "stale" : "online";
}

function hexdump(hex) {
  const lines = [];
  for (let offset = 0; offset < hex.length / 2; offset += 16) {
    const bytes = hex.slice(offset * 2, offset * 2 + 32).match(/../g) || [];
    const ascii = bytes.map(b => { const c = parseInt(b, 16); return c >= 32 && c < 127 ? String.fromCharCode(c) : "."; });
    lines.push(`${offset.toString(16).padStart(4, "0")}  ${bytes.join(" ").padEnd(48)}  ${ascii.join("")}`);
  }
  return lines.join("\n");
}

async function api(path, options) {
  const init = Object.assign({headers: {}}, options || {});
  init.headers["Authorization"] = `Bearer ${state.token}`;
  if (init.body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(init.body);
  }
  const response = await fetch(path, init);
  const body = await response.json();
  if (response.status === 401) { logout("Your token is no longer valid."); throw new Error(body.error); }
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function newMap(container) {
  const map = L.map(container, {worldCopyJump: true}).setView([20, 0], 2);
  if (state.config.tile_url) {
    L.tileLayer(state.config.tile_url, {maxZoom: 19, attribution: "&copy; OpenStreetMap contributors"}).addTo(map);
  }
  return map;
}

const COLORS = {online: "#2e9d4f", stale: "#f0a020", offline: "#8a96a3"};

// -- login ----------------------------------------------------------------------

function logout(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  state.grant = null;
  if (state.socket) { state.socket.onclose = null; state.socket.close(); state.socket = null; }
  document.getElementById("view").replaceChildren();
  document.getElementById("who").textContent = "";
  document.getElementById("logout").hidden = true;
  document.getElementById("login").hidden = false;
  document.getElementById("login-error").textContent = message || "";
}

async function login(token) {
  state.token = token;
  try {
    state.grant = await api("/api/whoami");
  } catch (e) {
    logout("That token was refused.");
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  document.getElementById("login").hidden = true;
  document.getElementById("logout").hidden = false;
  document.getElementById("who").textContent = `${state.grant.name}${state.grant.read_only ? " (read-only)" : ""}`;
  connectLive();
  route();
}

// -- the live feed ------------------------------------------------------------------

function connectLive() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const after = state.lastId !== null ? `&after_id=${state.lastId}` : "";
  const socket = new WebSocket(`${scheme}://${location.host}/api/live?token=${encodeURIComponent(state.token)}${after}`);
  state.socket = socket;
  socket.onopen = () => document.getElementById("live-state").classList.add("on");
  socket.onmessage = event => {
    const message = JSON.parse(event.data);
    if (message.type === "record") state.lastId = message.data.id;
    if (state.view && state.view.live) state.view.live(message);
  };
  socket.onclose = () => {
    document.getElementById("live-state").classList.remove("on");
    if (state.token) setTimeout(connectLive, 2000);
  };
}

// -- views ------------------------------------------------------------------------------

function fleetView(root) {
  const search = el("input", {type: "search", placeholder: "search id, peer", id: "search"});
  const protocol = el("select", {id: "protocol-filter"}, el("option", {value: ""}, "all protocols"));
  const body = el("tbody");
  const mapDiv = el("div", {class: "map", id: "fleet-map"});
  root.replaceChildren(el("div", {class: "fleet"},
    el("div", {class: "list"}, el("div", {class: "filters"}, search, protocol),
       el("table", {id: "device-list"}, el("thead", {}, el("tr", {},
         ["", "device", "protocol", "transport", "last seen", "peer"].map(h => el("th", {}, h)))), body)),
    mapDiv));
  const map = newMap(mapDiv);
  const markers = new Map();
  let fitted = false;

  function place(device) {
    const latest = device.latest;
    if (!latest || latest.latitude === null || latest.longitude === null) return;
    const color = COLORS[deviceStatus(device)];
    let marker = markers.get(device.id);
    if (!marker) {
      marker = L.circleMarker([latest.latitude, latest.longitude], {radius: 7, weight: 2});
      marker.on("click", () => { location.hash = `#/device/${encodeURIComponent(device.id)}`; });
      marker.bindTooltip("");
      marker.addTo(map);
      markers.set(device.id, marker);
      fitted = false;  // a device new to the map: show the whole fleet again
    }
    marker.setLatLng([latest.latitude, latest.longitude]);
    marker.setStyle({color, fillColor: color, fillOpacity: 0.8});
    marker.setTooltipContent(document.createTextNode(`${device.id} · ${device.protocol || ""}`));
    if (!fitted) fit();
  }

  function fit() {
    const points = [...markers.values()].map(m => m.getLatLng());
    if (!points.length) return;
    map.fitBounds(L.latLngBounds(points).pad(0.3), {maxZoom: 14});
    fitted = true;
  }

  function render() {
    const text = search.value.toLowerCase();
    const wanted = protocol.value;
    const rows = [];
    for (const device of [...state.devices.values()].sort((a, b) => a.id.localeCompare(b.id))) {
      if (wanted && device.protocol !== wanted) continue;
      if (text && !`${device.id} ${device.last_peer || ""}`.toLowerCase().includes(text)) continue;
      const status = deviceStatus(device);
      rows.push(el("tr", {class: "clickable", "data-device": device.id,
                          onclick: () => { location.hash = `#/device/${encodeURIComponent(device.id)}`; }},
        el("td", {}, el("span", {class: `status ${status}`, title: status})),
        el("td", {}, device.id), el("td", {}, device.protocol || ""), el("td", {}, device.transport || ""),
        el("td", {title: device.last_seen || ""}, ago(device.last_seen)), el("td", {}, device.last_peer || "")));
    }
    body.replaceChildren(...rows);
    const protocols = [...new Set([...state.devices.values()].map(d => d.protocol).filter(Boolean))].sort();
    if (protocol.options.length !== protocols.length + 1) {
      protocol.replaceChildren(el("option", {value: ""}, "all protocols"),
                               ...protocols.map(p => el("option", {value: p}, p)));
      protocol.value = wanted;
    }
  }

  async function load() {
    let after = null;
    do {
      const page = await api(`/api/devices?latest=true&limit=500${after ? `&after=${encodeURIComponent(after)}` : ""}`);
      for (const device of page.devices) state.devices.set(device.id, device);
      after = page.next;
    } while (after);
    for (const device of state.devices.values()) place(device);
    fit();
    render();
  }

  search.addEventListener("input", render);
  protocol.addEventListener("change", render);
  const timer = setInterval(render, 15000);
  load().catch(e => root.prepend(el("p", {class: "error"}, e.message)));
  return {
    live(message) {
      if (message.type === "record") {
        const record = message.data;
        const device = state.devices.get(record.device_id) ||
          {id: record.device_id, protocol: record.protocol, online: true, transport: null, last_peer: null};
        device.latest = record;
        device.last_seen = record.server_time;
        state.devices.set(device.id, device);
        place(device);
        render();
      } else if (message.type === "device") {
        const data = message.data;
        const device = state.devices.get(data.device_id) || {id: data.device_id, latest: null};
        Object.assign(device, {online: data.online, protocol: data.protocol, transport: data.transport,
                               last_peer: data.peer});
        if (data.online) device.last_seen = data.at;
        state.devices.set(device.id, device);
        place(device);
        render();
      }
    },
    close() { clearInterval(timer); map.remove(); },
  };
}

function recordRow(record) {
  const attributes = JSON.stringify(record.attributes);
  return el("tr", {"data-id": record.id},
    el("td", {}, record.time || "(no time)", record.archive ? [" ", el("span", {class: "badge archive", title: "buffered history"}, "archive")] : null),
    el("td", {}, record.latitude === null ? "no fix" : `${fmt(record.latitude, 5)}, ${fmt(record.longitude, 5)}`,
       record.valid ? "" : " (not valid)"),
    el("td", {}, fmt(record.speed_kmh, 1)), el("td", {}, fmt(record.course, 0)),
    el("td", {}, record.alarm.map(a => el("span", {class: "badge alarm"}, a))), el("td", {}, record.event || ""),
    el("td", {class: "hex", title: attributes}, attributes.length > 160 ? attributes.slice(0, 160) + "…" : attributes));
}

function commandRow(command) {
  return el("tr", {"data-command": command.id},
    el("td", {}, command.id), el("td", {}, command.type), el("td", {}, JSON.stringify(command.params)),
    el("td", {class: "command-status"}, command.status), el("td", {}, command.created_at || ""),
    el("td", {}, command.sent_at || ""), el("td", {}, command.reply || command.error || ""));
}

function deviceView(root, deviceId) {
  const title = el("h1", {}, deviceId);
  const info = el("div", {class: "panel", id: "device-info"});
  const mapDiv = el("div", {class: "map device-map", id: "device-map"});
  const from = el("input", {type: "datetime-local", id: "track-from", step: "1"});
  const to = el("input", {type: "datetime-local", id: "track-to", step: "1"});
  const records = el("tbody", {id: "records"});
  const commands = el("tbody", {id: "commands"});
  const raw = el("div", {class: "raw", id: "raw"});
  const send = el("div", {id: "send-command"});
  root.replaceChildren(title, info, mapDiv,
    el("div", {class: "panel"}, el("h2", {}, "Track"),
       el("div", {class: "row"}, el("label", {}, "from (UTC) ", from), el("label", {}, "to (UTC) ", to),
          el("button", {type: "button", id: "show-track", onclick: () => showTrack()}, "Show"),
          el("span", {id: "track-count"})),
       el("table", {}, el("thead", {}, el("tr", {}, ["time", "position", "km/h", "course", "alarms", "event",
                                                      "attributes"].map(h => el("th", {}, h)))), records)),
    el("div", {class: "panel"}, el("h2", {}, "Commands"), send,
       el("table", {}, el("thead", {}, el("tr", {}, ["id", "type", "params", "status", "created", "sent",
                                                      "reply"].map(h => el("th", {}, h)))), commands)),
    el("div", {class: "panel"}, el("h2", {}, "Raw traffic (live)"), raw));
  const map = newMap(mapDiv);
  const track = L.polyline([], {color: "#1f6fd1"}).addTo(map);
  const last = L.circleMarker([0, 0], {radius: 7, color: COLORS.online});

  function iso(input) { return input.value ? new Date(input.value + "Z").toISOString() : null; }
  function local(date) { return date.toISOString().slice(0, 19); }

  async function showTrack() {
    const query = [`limit=5000`];
    if (iso(from)) query.push(`from=${encodeURIComponent(iso(from))}`);
    if (iso(to)) query.push(`to=${encodeURIComponent(iso(to))}`);
    const body = await api(`/api/devices/${encodeURIComponent(deviceId)}/track?${query.join("&")}`);
    records.replaceChildren(...body.records.slice().reverse().map(recordRow));
    document.getElementById("track-count").textContent = `${body.records.length} records`;
    const points = body.records.filter(r => r.latitude !== null).map(r => [r.latitude, r.longitude]);
    track.setLatLngs(points);
    if (points.length) map.fitBounds(L.latLngBounds(points).pad(0.2), {maxZoom: 16});
  }

  async function loadInfo() {
    const device = await api(`/api/devices/${encodeURIComponent(deviceId)}`);
    const status = deviceStatus(device);
    info.replaceChildren(...[
      el("p", {}, el("span", {class: `status ${status}`}), `${status} · ${device.protocol || "?"} · ${device.transport || ""}`,
         ` · last seen ${ago(device.last_seen)} from ${device.last_peer || "?"}`),
      device.conflict ? el("p", {class: "conflict", id: "conflict"}, `Identity conflict: ${device.conflict}`) : null,
      el("table", {id: "sessions"}, el("thead", {}, el("tr", {}, ["transport", "peer", "since", "last frame"].map(h => el("th", {}, h)))),
         el("tbody", {}, device.sessions.map(s => el("tr", {}, el("td", {}, s.transport), el("td", {}, s.peer),
                                                         el("td", {}, s.since), el("td", {}, s.last_frame)))))].filter(Boolean));
    if (device.latest && device.latest.latitude !== null) last.setLatLng([device.latest.latitude, device.latest.longitude]).addTo(map);
    return device;
  }

  async function loadCommands() {
    const body = await api(`/api/commands?device_id=${encodeURIComponent(deviceId)}&limit=50`);
    commands.replaceChildren(...body.commands.map(commandRow));
  }

  function sendForm() {
    if (state.grant.read_only) return;
    const type = el("select", {id: "command-type"},
      ["engine_stop", "engine_resume", "position_request", "reboot", "set_interval", "custom"].map(t => el("option", {value: t}, t)));
    const params = el("input", {id: "command-params", placeholder: "key=value, key=value (seconds=60, text=..., hex=...)", size: 40});
    const confirm = el("input", {id: "command-confirm", placeholder: "type the device id to confirm", hidden: true});
    const message = el("span", {id: "command-message"});
    type.addEventListener("change", () => { confirm.hidden = type.value !== "engine_stop"; });
    const button = el("button", {type: "button", id: "command-send", onclick: async () => {
      message.textContent = "";
      if (type.value === "engine_stop" && confirm.value !== deviceId) {
        message.textContent = "engine_stop cuts the engine: type the device id exactly to confirm.";
        message.className = "error";
        return;
      }
      const parsed = {};
      for (const pair of params.value.split(",").map(p => p.trim()).filter(Boolean)) {
        const at = pair.indexOf("=");
        if (at < 1) { message.textContent = `not key=value: ${pair}`; message.className = "error"; return; }
        parsed[pair.slice(0, at).trim()] = pair.slice(at + 1).trim();
      }
      try {
        const command = await api("/api/commands", {method: "POST", body: {device_id: deviceId, type: type.value, params: parsed}});
        message.textContent = `command ${command.id} ${command.status}`;
        message.className = "";
        confirm.value = "";
        loadCommands();
      } catch (e) { message.textContent = e.message; message.className = "error"; }
    }}, "Send");
    send.replaceChildren(el("div", {class: "row"}, type, params, confirm, button, message));
  }

  function rawSocket() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/api/live?token=${encodeURIComponent(state.token)}&raw=${encodeURIComponent(deviceId)}`);
    socket.onmessage = async event => {
      const message = JSON.parse(event.data);
      if (message.type !== "raw" || message.data.device_id !== deviceId) return;
      const data = message.data;
      const line = el("div", {class: data.direction},
        el("pre", {}, `${data.at} ${data.direction === "in" ? "device →" : "→ device"} ${data.transport} ${data.peer} (${data.length} bytes)\n${data.hex}`));
      raw.prepend(line);
      while (raw.childElementCount > 200) raw.lastChild.remove();
      if (data.direction === "in") {
        try {
          const decoded = await api("/api/decode", {method: "POST", body: {hex: data.hex, transport: data.transport}});
          line.append(el("pre", {class: "decoded"}, `decoded: ${decoded.protocol || "?"}, ${decoded.records.length} records` +
            (decoded.records[0] ? `, first at ${decoded.records[0].time} ${fmt(decoded.records[0].latitude, 5)},${fmt(decoded.records[0].longitude, 5)}` : "") +
            (decoded.errors.length ? `, errors: ${decoded.errors.join("; ")}` : "")));
        } catch (e) { line.append(el("pre", {class: "error"}, e.message)); }
      }
    };
    return socket;
  }

  sendForm();
  const rawFeed = rawSocket();
  const timer = setInterval(() => loadCommands().catch(() => {}), 3000);
  loadInfo().then(device => {
    const end = device.latest && device.latest.time ? new Date(Date.parse(device.latest.time) + 60000) : new Date();
    to.value = local(end);
    from.value = local(new Date(end.getTime() - 86400000));
    return showTrack();
  }).catch(e => root.prepend(el("p", {class: "error"}, e.message)));
  loadCommands().catch(() => {});
  return {
    live(message) {
      if (message.type === "record" && message.data.device_id === deviceId) {
        records.prepend(recordRow(message.data));
        if (message.data.latitude !== null) {
          track.addLatLng([message.data.latitude, message.data.longitude]);
          last.setLatLng([message.data.latitude, message.data.longitude]).addTo(map);
        }
      } else if (message.type === "device" && message.data.device_id === deviceId) {
        loadInfo().catch(() => {});
      } else if (message.type === "command" && message.data.device_id === deviceId) {
        loadCommands().catch(() => {});
      }
    },
    close() { clearInterval(timer); rawFeed.onmessage = null; rawFeed.close(); map.remove(); },
  };
}

function unknownView(root) {
  const list = el("div", {id: "unknown-list"});
  const input = el("textarea", {id: "decode-input", placeholder: "hex bytes, one chunk per line"});
  const transport = el("select", {id: "decode-transport"}, el("option", {value: "tcp"}, "tcp"), el("option", {value: "udp"}, "udp"));
  const output = el("pre", {id: "decode-output"});
  root.replaceChildren(
    el("div", {class: "panel"}, el("h2", {}, "Decode this"), input,
       el("div", {class: "row"}, transport, el("button", {type: "button", id: "decode-run", onclick: async () => {
         const chunks = input.value.split(/\n+/).map(s => s.replace(/\s+/g, "")).filter(Boolean);
         try {
           const result = await api("/api/decode", {method: "POST", body: {hex: chunks, transport: transport.value}});
           output.textContent = JSON.stringify(result, null, 2);
         } catch (e) { output.textContent = e.message; }
       }}, "Decode")), output),
    el("div", {class: "panel"}, el("h2", {}, "Traffic no decoder recognised"), list));
  api("/api/unknown?limit=100").then(body => {
    list.replaceChildren(...(body.unknown.length ? body.unknown.slice().reverse().map(u => el("div", {class: "panel unknown-sample"},
      el("p", {}, `${u.received_at} · ${u.transport} · ${u.peer} · ${u.length} bytes `,
         el("button", {type: "button", onclick: () => { input.value = u.hex; transport.value = u.transport; }}, "decode this")),
      el("pre", {}, hexdump(u.hex)))) : [el("p", {}, "None: every session so far spoke a known protocol.")]));
  }).catch(e => list.replaceChildren(el("p", {class: "error"}, e.message)));
  return {};
}

function healthView(root) {
  const cards = el("div", {class: "cards", id: "health-cards"});
  const sessions = el("tbody");
  root.replaceChildren(cards, el("div", {class: "panel"}, el("h2", {}, "Sessions"),
    el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "protocol"), el("th", {}, "transport"), el("th", {}, "count"))), sessions)));
  let previous = null;
  async function refresh() {
    const stats = await api("/api/stats");
    const now = Date.now();
    const rate = previous ? (stats.records_total - previous.records) / ((now - previous.at) / 1000) : null;
    previous = {records: stats.records_total, at: now};
    const card = (label, value, id) => el("div", {class: "card", id}, el("div", {}, label), el("div", {class: "value"}, value));
    cards.replaceChildren(
      card("records/s", rate === null ? "…" : rate.toFixed(1), "records-rate"),
      card("sessions", stats.sessions.reduce((n, s) => n + s.count, 0), "sessions-count"),
      card("mean ack latency", stats.acks.mean_seconds === null ? "–" : `${(stats.acks.mean_seconds * 1000).toFixed(1)} ms`, "ack-latency"),
      card("writer queue", stats.writer_queue, "writer-queue"),
      card("database", stats.database_up ? "up" : "DOWN", "database"),
      card("commands", Object.entries(stats.commands).map(([k, v]) => `${k} ${v}`).join(", ") || "none", "commands"),
      ...(stats.forwarding || []).map(f => card(`forward ${f.name} lag`, `${f.lag_records} records`, `forward-${f.name}`)));
    sessions.replaceChildren(...stats.sessions.map(s => el("tr", {}, el("td", {}, s.protocol), el("td", {}, s.transport), el("td", {}, s.count))));
  }
  refresh().catch(e => root.prepend(el("p", {class: "error"}, e.message)));
  const timer = setInterval(() => refresh().catch(() => {}), 2000);
  return {close() { clearInterval(timer); }};
}

// -- routing --------------------------------------------------------------------------

function route() {
  if (!state.token) return;
  if (state.view && state.view.close) state.view.close();
  const root = document.getElementById("view");
  const hash = location.hash || "#/";
  let name = "fleet";
  if (hash.startsWith("#/device/")) {
    name = "device";
    state.view = deviceView(root, decodeURIComponent(hash.slice("#/device/".length)));
  } else if (hash === "#/unknown") {
    name = "unknown";
    state.view = unknownView(root);
  } else if (hash === "#/health") {
    name = "health";
    state.view = healthView(root);
  } else {
    state.view = fleetView(root);
  }
  for (const link of document.querySelectorAll("header nav a")) link.classList.toggle("active", link.dataset.view === name);
}

async function start() {
  state.config = await (await fetch("/console/config.json")).json();
  const fragment = location.hash.match(/^#token=([^&]+)/);
  if (fragment) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(fragment[1]));
    history.replaceState(null, "", location.pathname + "#/");
  }
  document.getElementById("login-form").addEventListener("submit", event => {
    event.preventDefault();
    login(document.getElementById("token-input").value.trim());
  });
  document.getElementById("logout").addEventListener("click", () => logout(""));
  window.addEventListener("hashchange", route);
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) login(token); else logout("");
}

start();
