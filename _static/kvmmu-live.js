// "Run it live" (tools/sphinx/kvmmu_live.py): open the book's own JupyterLite
// REPL in an iframe under the cell, running the cell's code.  The REPL is
// served from the book's lite/ folder, so it is same-origin: we watch it for
// the cell's output, then hide the frozen snapshot and let the frame grow with
// the live widget, so it reads like the cell's output.
(function () {
  // Jupyter Book lists extension scripts twice on a page: install once.
  if (window.kvmmuLiveInstalled) return;
  window.kvmmuLiveInstalled = true;

  function consoleOf(frame) {
    try {
      var doc = frame.contentDocument;
      return doc && doc.querySelector(".jp-CodeConsole-content");
    } catch (e) {
      return null;
    }
  }

  // Grow (never shrink, so it cannot oscillate) until the console's cells fit.
  function fit(frame, content) {
    var overflow = content.scrollHeight - content.clientHeight;
    var limit = 3 * window.innerHeight;
    if (overflow > 1 && frame.offsetHeight < limit) {
      frame.style.height = Math.min(limit, frame.offsetHeight + overflow) + "px";
    }
  }

  function start(control) {
    if (control.querySelector("iframe")) return;
    var button = control.querySelector(".kvmmu-live-start");
    var status = control.querySelector(".kvmmu-live-status");
    var frame = document.createElement("iframe");
    frame.className = "kvmmu-live-frame";
    frame.title = "Live Python (Pyodide) running this cell";
    frame.src = control.querySelector(".kvmmu-live-tab").href;
    button.disabled = true;
    status.textContent = "Starting Python in this page\u2026";
    control.appendChild(frame);
    var live = false;
    setInterval(function () {
      var content = consoleOf(frame);
      if (!content) return;
      if (!live && content.querySelector(".jp-OutputArea-output")) {
        live = true;
        var cell = control.closest(".cell");
        var snapshot = cell && cell.querySelector(".cell_output");
        if (snapshot) snapshot.hidden = true;
        control.classList.add("kvmmu-live-running");
        button.textContent = "\u25CF Live";
        status.textContent = "Python runs in this page; under the widget you can type more code.";
      }
      if (live) fit(frame, content);
    }, 300);
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest(".kvmmu-live-start");
    if (button) start(button.closest(".kvmmu-live"));
  });
})();
