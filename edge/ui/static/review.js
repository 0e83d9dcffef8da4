// One review item: the board with editable boxes (draw, move, resize, delete, name), its template, and the label
// sent to the edge's API with the login's CSRF token. Boxes are kept in image pixels; the canvas only scales them.
"use strict";
(function () {
  const sample = JSON.parse(document.getElementById("sample").textContent);
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const canvas = document.getElementById("board");
  const context = canvas.getContext("2d");
  const list = document.getElementById("boxes");
  const saved = document.getElementById("saved");
  const newClass = document.getElementById("new-class");
  const canLabel = document.getElementById("confirm") !== null;
  const HANDLE = 6; // px on the canvas around a corner that grabs it
  const COLORS = ["#e53935", "#1e88e5", "#43a047", "#fb8c00", "#8e24aa", "#00897b", "#6d4c41", "#3949ab"];
  let boxes = sample.boxes.map((b) => ({ x1: b.x1, y1: b.y1, x2: b.x2, y2: b.y2, class_name: b.class_name }));
  let selected = -1;
  let drag = null;
  let showTemplate = false;
  const scale = Math.max(1, Math.min(8, 720 / Math.max(sample.width, sample.height)));
  canvas.width = Math.round(sample.width * scale);
  canvas.height = Math.round(sample.height * scale);
  const image = new Image();
  const template = new Image();
  image.onload = draw;
  image.src = `/v1/samples/${sample.sample_id}/image?boxes=false`;
  if (sample.has_template) {
    const side = document.getElementById("template");
    side.width = canvas.width;
    side.height = canvas.height;
    template.onload = () => {
      const c = side.getContext("2d");
      c.imageSmoothingEnabled = false;
      c.drawImage(template, 0, 0, side.width, side.height);
      draw();
    };
    template.src = `/v1/samples/${sample.sample_id}/template`;
  }

  const clamp = (v, hi) => Math.min(Math.max(v, 0), hi);
  const round = (v) => Math.round(v * 10) / 10;
  function toImage(event) {
    const r = canvas.getBoundingClientRect();
    return {
      x: clamp((event.clientX - r.left) * (canvas.width / r.width) / scale, sample.width),
      y: clamp((event.clientY - r.top) * (canvas.height / r.height) / scale, sample.height),
    };
  }
  function color(name) {
    const k = sample.classes.indexOf(name);
    return COLORS[(k < 0 ? 0 : k) % COLORS.length];
  }

  function draw() {
    context.imageSmoothingEnabled = false;
    context.clearRect(0, 0, canvas.width, canvas.height);
    const shown = showTemplate && sample.has_template ? template : image;
    if (shown.complete && shown.naturalWidth) context.drawImage(shown, 0, 0, canvas.width, canvas.height);
    boxes.forEach((b, i) => {
      context.strokeStyle = color(b.class_name);
      context.lineWidth = i === selected ? 3 : 2;
      context.strokeRect(b.x1 * scale, b.y1 * scale, (b.x2 - b.x1) * scale, (b.y2 - b.y1) * scale);
      context.fillStyle = color(b.class_name);
      context.font = "12px sans-serif";
      context.fillText(`${i + 1} ${b.class_name}`, b.x1 * scale + 2, Math.max(12, b.y1 * scale - 3));
      if (i === selected) {
        for (const [x, y] of corners(b)) context.fillRect(x * scale - 3, y * scale - 3, 6, 6);
      }
    });
    renderList();
  }
  function corners(b) {
    return [[b.x1, b.y1], [b.x2, b.y1], [b.x1, b.y2], [b.x2, b.y2]];
  }

  function renderList() {
    list.replaceChildren();
    boxes.forEach((b, i) => {
      const item = document.createElement("li");
      item.className = i === selected ? "selected" : "";
      item.dataset.index = String(i);
      const label = document.createElement("span");
      label.textContent = `${i + 1}: ${Math.round(b.x1)},${Math.round(b.y1)} - ${Math.round(b.x2)},${Math.round(b.y2)}`;
      item.append(label);
      if (canLabel) {
        const pick = document.createElement("select");
        pick.className = "box-class";
        for (const name of sample.classes) {
          const option = document.createElement("option");
          option.value = name;
          option.textContent = name;
          option.selected = name === b.class_name;
          pick.append(option);
        }
        pick.onchange = () => { boxes[i].class_name = pick.value; draw(); };
        const remove = document.createElement("button");
        remove.className = "delete-box";
        remove.textContent = "Delete";
        remove.onclick = () => { boxes.splice(i, 1); selected = -1; draw(); };
        item.append(pick, remove);
      } else {
        const name = document.createElement("span");
        name.textContent = b.class_name;
        item.append(name);
      }
      item.onclick = (event) => { if (event.target === item || event.target === label) { selected = i; draw(); } };
      list.append(item);
    });
  }

  function hit(point) {
    const near = HANDLE / scale;
    for (let i = boxes.length - 1; i >= 0; i--) {
      const b = boxes[i];
      const cornerIndex = corners(b).findIndex(([x, y]) => Math.abs(x - point.x) <= near && Math.abs(y - point.y) <= near);
      if (cornerIndex >= 0) return { index: i, corner: cornerIndex };
    }
    for (let i = boxes.length - 1; i >= 0; i--) {
      const b = boxes[i];
      if (point.x >= b.x1 && point.x <= b.x2 && point.y >= b.y1 && point.y <= b.y2) return { index: i, corner: -1 };
    }
    return null;
  }

  if (canLabel) {
    canvas.addEventListener("mousedown", (event) => {
      const point = toImage(event);
      const found = hit(point);
      if (found && found.corner >= 0) {
        selected = found.index;
        drag = { mode: "resize", corner: found.corner };
      } else if (found) {
        selected = found.index;
        drag = { mode: "move", from: point, start: { ...boxes[found.index] } };
      } else if (sample.classes.length) {
        boxes.push({ x1: point.x, y1: point.y, x2: point.x, y2: point.y, class_name: newClass.value });
        selected = boxes.length - 1;
        drag = { mode: "draw", from: point };
      }
      canvas.focus();
      draw();
      event.preventDefault();
    });
    window.addEventListener("mousemove", (event) => {
      if (!drag || selected < 0) return;
      const point = toImage(event);
      const b = boxes[selected];
      if (drag.mode === "draw") {
        b.x1 = Math.min(drag.from.x, point.x); b.x2 = Math.max(drag.from.x, point.x);
        b.y1 = Math.min(drag.from.y, point.y); b.y2 = Math.max(drag.from.y, point.y);
      } else if (drag.mode === "move") {
        const w = drag.start.x2 - drag.start.x1, h = drag.start.y2 - drag.start.y1;
        b.x1 = clamp(drag.start.x1 + point.x - drag.from.x, sample.width - w); b.x2 = b.x1 + w;
        b.y1 = clamp(drag.start.y1 + point.y - drag.from.y, sample.height - h); b.y2 = b.y1 + h;
      } else {
        const xs = drag.corner % 2 === 0 ? "x1" : "x2", ys = drag.corner < 2 ? "y1" : "y2";
        b[xs] = point.x; b[ys] = point.y;
      }
      draw();
    });
    window.addEventListener("mouseup", () => {
      if (!drag || selected < 0) { drag = null; return; }
      const b = boxes[selected];
      [b.x1, b.x2] = [Math.min(b.x1, b.x2), Math.max(b.x1, b.x2)];
      [b.y1, b.y2] = [Math.min(b.y1, b.y2), Math.max(b.y1, b.y2)];
      if (b.x2 - b.x1 < 1 || b.y2 - b.y1 < 1) { boxes.splice(selected, 1); selected = -1; } // a click, not a box
      drag = null;
      draw();
    });
    document.getElementById("confirm").onclick = () => send(sample.verdict, sample.verdict === "good" ? [] : boxes);
    document.getElementById("good").onclick = () => send("good", []);
    document.getElementById("defective").onclick = () => send("defective", boxes);
  }

  document.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLSelectElement || event.target instanceof HTMLInputElement) return;
    const key = event.key;
    if (key === "t" && sample.has_template) { showTemplate = !showTemplate; draw(); return; }
    if (key === "n") { const next = document.getElementById("next"); if (next) next.click(); return; }
    if (!canLabel) return;
    if ((key === "Delete" || key === "Backspace") && selected >= 0) {
      boxes.splice(selected, 1); selected = -1; draw(); event.preventDefault();
    } else if (/^[1-9]$/.test(key) && selected >= 0 && sample.classes[Number(key) - 1]) {
      boxes[selected].class_name = sample.classes[Number(key) - 1]; draw();
    } else if (key === "Escape") {
      selected = -1; draw();
    } else if (key === "c") { document.getElementById("confirm").click(); }
    else if (key === "g") { document.getElementById("good").click(); }
    else if (key === "d") { document.getElementById("defective").click(); }
  });

  async function send(verdict, chosen) {
    saved.className = "";
    saved.textContent = "saving...";
    const body = {
      verdict,
      boxes: chosen.map((b) => ({ x1: round(b.x1), y1: round(b.y1), x2: round(b.x2), y2: round(b.y2), class_name: b.class_name })),
    };
    const response = await fetch(`/v1/samples/${sample.sample_id}/label`, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body),
    });
    const answer = await response.json().catch(() => ({}));
    if (response.ok) {
      saved.textContent = `Saved: ${verdict}, ${body.boxes.length} box${body.boxes.length === 1 ? "" : "es"} (label ${answer.label_id})`;
    } else {
      saved.className = "error";
      saved.textContent = `Not saved: ${answer.detail || response.status}`;
    }
  }
})();
