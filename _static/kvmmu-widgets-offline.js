// Point the widget renderer's own assets (icon fonts) at the book's copy.
// html-manager resolves them through require.js module paths, which default
// to the page's directory; map them to _static/vendor/html-manager instead,
// so a reader offline gets every glyph and no request leaves the machine.
// Works whether it runs before require.js (a global `require` object is
// require.js's documented way to pass configuration) or after it.
(function () {
  var staticDir = document.currentScript.src.replace(/[^/]*$/, "");
  var manager = staticDir + "vendor/html-manager";
  var config = {
    paths: {
      "@jupyter-widgets/html-manager/dist": manager,
      "@jupyter-widgets": manager
    }
  };
  if (typeof window.require === "function" && window.require.config) {
    window.require.config(config);
  } else {
    window.require = config;
  }
})();
