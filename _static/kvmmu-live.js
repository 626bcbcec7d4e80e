// "Run it live" (tools/sphinx/kvmmu_live.py): open the book's own JupyterLite
// REPL in an iframe under the widget snapshot, running the cell's code.  The
// REPL is served from the book's lite/ folder, so it is same-origin: we watch
// it for the cell's output and then hide the frozen snapshot above.
(function () {
  // Jupyter Book lists extension scripts twice on a page: install once.
  if (window.kvmmuLiveInstalled) return;
  window.kvmmuLiveInstalled = true;

  function outputShown(frame) {
    try {
      var doc = frame.contentDocument;
      return !!(doc && doc.querySelector(".jp-CodeConsole .jp-OutputArea-output"));
    } catch (e) {
      return false;
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
    var timer = setInterval(function () {
      if (!outputShown(frame)) return;
      clearInterval(timer);
      var cell = control.closest(".cell");
      var snapshot = cell && cell.querySelector(".cell_output");
      if (snapshot) snapshot.hidden = true;
      control.classList.add("kvmmu-live-running");
      status.textContent = "Live: Python runs in this page. Below the widget you can type more code.";
    }, 250);
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest(".kvmmu-live-start");
    if (button) start(button.closest(".kvmmu-live"));
  });
})();
