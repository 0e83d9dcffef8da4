// The hub's page actions, sent to the hub's own API with the login's CSRF token: commands to edges (train now and
// report: operator; pin: admin) with their acks, and rollbacks (admin). The API decides what a role may do; this only asks and shows the answer.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  async function post(path, body) {
    const response = await fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body),
    });
    return { ok: response.ok, answer: await response.json().catch(() => ({})) };
  }
  // The edge answers a command with acks (accepted, then succeeded / failed / rejected / expired): poll the hub's
  // record of them until a final one or ACK_WAIT_MS, and show each as it comes.
  const ACK_POLL_MS = 1000;
  const ACK_WAIT_MS = 60000;
  async function follow(commandId, label, out) {
    const deadline = Date.now() + ACK_WAIT_MS;
    while (Date.now() < deadline) {
      let response;
      try {
        response = await fetch(`/v1/commands/${commandId}`, { credentials: "same-origin" });
      } catch (error) {
        response = null; // the hub did not answer this time: ask again
      }
      if (response && [401, 403, 404].includes(response.status)) {
        out.textContent = `${label}: cannot follow its acks (${response.status}; log in again to see them)`;
        return;
      }
      if (response && response.ok) {
        const status = await response.json();
        const last = status.acks.length ? status.acks[status.acks.length - 1] : null;
        out.dataset.outcome = status.outcome;
        out.textContent = `${label}: ${status.outcome}` + (last && last.detail ? ` (${last.detail})` : "");
        if (status.outcome !== "pending" && status.outcome !== "accepted") return;
      }
      await new Promise((resolve) => setTimeout(resolve, ACK_POLL_MS));
    }
    out.textContent += " - no final answer yet (the edge may be offline; the command expires on its own)";
  }
  for (const button of document.querySelectorAll("button.command")) {
    button.addEventListener("click", async () => {
      const { action, edge, model } = button.dataset;
      const command = { action };
      if (action === "train_now" || action === "pin_model") command.model_name = model;
      let label = action === "pin_model" ? `pin ${model}` : action === "train_now" ? `train ${model}` : action;
      if (action === "pin_model") {
        const chosen = document.querySelector(`select.pin-version[data-edge="${edge}"][data-model="${model}"]`).value;
        command.version = chosen === "" ? null : Number(chosen);
        label += chosen === "" ? " (unpin)" : ` to v${chosen}`;
      }
      const out = document.querySelector(`.ack[data-edge="${edge}"]`);
      const { ok, answer } = await post(`/v1/edges/${edge}/commands`, { command });
      if (!ok) {
        out.dataset.outcome = "refused";
        out.textContent = `${label}: refused: ${answer.detail}`;
        return;
      }
      out.textContent = `${label}: sent`;
      await follow(answer.command_id, label, out);
    });
  }
  for (const button of document.querySelectorAll("button.rollback")) {
    button.addEventListener("click", async () => {
      const version = Number(button.dataset.version);
      if (!window.confirm(`Publish a new version of ${button.dataset.model} with v${version}'s weights?`)) return;
      const { ok, answer } = await post(`/v1/models/${button.dataset.model}/rollback`, { to_version: version });
      document.getElementById("result").textContent = ok
        ? `v${answer.version} published from v${version}; reload to see it` : `refused: ${answer.detail}`;
    });
  }
})();
