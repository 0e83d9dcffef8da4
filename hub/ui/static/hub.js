// The hub's page actions, sent to the hub's own API with the login's CSRF token: commands to edges (operator) and
// rollbacks (admin). The API decides what a role may do; this only asks and shows the answer.
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
  for (const button of document.querySelectorAll("button.command")) {
    button.addEventListener("click", async () => {
      const command = { action: button.dataset.action };
      if (button.dataset.action === "train_now") command.model_name = button.dataset.model;
      const out = document.querySelector(`.ack[data-edge="${button.dataset.edge}"]`);
      const { ok, answer } = await post(`/v1/edges/${button.dataset.edge}/commands`, { command });
      out.textContent = ok ? `sent ${answer.command_id}` : `refused: ${answer.detail}`;
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
