// Point the widget renderer's own assets (icon fonts) at the book's copy.
// html-manager resolves them through require.js module paths, which default
// to the page's directory; map them to _static/vendor/html-manager instead,
// so a reader offline gets every glyph and no request leaves the machine.
(function () {
  var staticDir = document.currentScript.src.replace(/[^/]*$/, "");
  var manager = staticDir + "vendor/html-manager";
  require.config({
    paths: {
      "@jupyter-widgets/html-manager/dist": manager,
      "@jupyter-widgets": manager
    }
  });
})();
