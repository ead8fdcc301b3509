// Toasts for messages (also after htmx fragment swaps) and for failed htmx requests.
(function () {
  "use strict";

  function toast(text, level) {
    var box = document.getElementById("toasts");
    if (!box) return;
    var el = document.createElement("div");
    el.className = "toast toast-" + (level || "info");
    el.setAttribute("role", level === "error" ? "alert" : "status");
    el.textContent = text;
    var close = document.createElement("button");
    close.type = "button";
    close.className = "toast-close";
    close.setAttribute("aria-label", "Dismiss");
    close.textContent = "×";
    close.addEventListener("click", function () { el.remove(); });
    el.appendChild(close);
    box.appendChild(el);
    if (level !== "error") setTimeout(function () { el.remove(); }, 8000);
  }
  window.clazarToast = toast;

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("#toasts .toast").forEach(function (el) {
      if (!el.classList.contains("toast-error")) setTimeout(function () { el.remove(); }, 8000);
    });
  });

  // Server messages sent with HX-Trigger: {"messages": [{"level": "success", "text": "..."}]}
  document.body && document.body.addEventListener("messages", onMessages);
  document.addEventListener("messages", onMessages);
  function onMessages(event) {
    if (event.__seen) return;
    event.__seen = true;
    (event.detail && event.detail.value || event.detail || []).forEach(function (m) { toast(m.text, m.level); });
  }

  document.addEventListener("htmx:responseError", function (event) {
    var xhr = event.detail.xhr;
    var reason = xhr.status === 403 ? "You are not allowed to do that." :
                 xhr.status === 404 ? "It no longer exists: reload the page." :
                 xhr.status >= 500 ? "The server failed (HTTP " + xhr.status + "). The error was logged; try again." :
                 "The request failed (HTTP " + xhr.status + ").";
    toast(reason, "error");
  });
  document.addEventListener("htmx:sendError", function () {
    toast("Could not reach clazar-dest: check your connection and try again.", "error");
  });
  document.addEventListener("htmx:timeout", function () {
    toast("The request timed out. Try again.", "error");
  });
})();
