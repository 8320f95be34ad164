// dagrun dashboard: Run Agent Once, Invalidate, and the live state table (polling
// /api/state once a second). No framework, no network beyond this server.
"use strict";

function escapeHtml(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function row(stage) {
  const took = stage.last_duration_ms == null ? "" : (stage.last_duration_ms / 1000).toFixed(2) + "s";
  const name = escapeHtml(stage.stage);
  // A stage running on Slurm shows its job instead of why it was dirty.
  const job = stage.job && `Slurm job ${stage.job.id} ${stage.job.state ?? "(state unknown)"}`;
  return `<tr data-stage="${name}" class="state-${stage.state}"><td>${name}</td>` +
    `<td class="state">${stage.state.replace(/_/g, " ")}</td><td class="why">${escapeHtml(job || stage.why)}</td>` +
    `<td>${escapeHtml(stage.last_run_at ?? "never")}</td><td class="runs">${stage.run_count}</td>` +
    `<td class="failures">${stage.failure_count}</td><td>${took}</td>` +
    `<td><button class="invalidate" data-stage="${name}" type="button">Invalidate</button></td></tr>`;
}

function activity(view) {
  const run = view.running;
  let text = !run ? "idle"
    : run.run_id == null ? `a ${run.trigger} build is ${run.started_at}`
    : `run ${run.run_id} (${run.trigger}) running since ${run.started_at}`;
  if (view.schedule && view.schedule.next_due) text += `; next scheduled cycle at ${view.schedule.next_due}`;
  if (view.schedule && view.schedule.watch_error) text += `; not watching: ${view.schedule.watch_error}`;
  else if (view.schedule && view.schedule.watch_warning) text += `; watching only some inputs: ${view.schedule.watch_warning}`;
  else if (view.schedule && view.schedule.watch) text += "; watching inputs for changes";
  return text;
}

async function refresh() {
  const table = document.querySelector("#state tbody");
  if (!table) return;
  try {
    const response = await fetch("/api/state", { credentials: "same-origin" });
    if (!response.ok) return;
    const view = await response.json();
    table.innerHTML = view.stages.map(row).join("");
    document.getElementById("activity").textContent = activity(view);
    document.getElementById("run-once").disabled = Boolean(view.running);
  } catch (error) {
    document.getElementById("activity").textContent = "the dashboard is not answering";
  }
}

async function post(url) {
  const response = await fetch(url, { method: "POST", credentials: "same-origin" });
  const body = await response.json().catch(() => ({}));
  if (!response.ok && response.status !== 409) alert(body.error || response.statusText);
  await refresh();
}

document.addEventListener("click", (event) => {
  const target = event.target;
  if (target.id === "run-once") post("/api/run-once");
  if (target.classList && target.classList.contains("invalidate")) {
    post("/api/invalidate/" + encodeURIComponent(target.dataset.stage));
  }
});

// The next poll is scheduled once the last one answered, so requests never pile up.
async function poll() {
  await refresh();
  setTimeout(poll, 1000);
}

if (document.querySelector("#state")) poll();
