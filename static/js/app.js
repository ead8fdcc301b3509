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

// Destination wizard: attribute pickers, JSON checks in test mode, typed confirmations.
(function () {
  "use strict";

  document.addEventListener("change", function (event) {
    var picker = event.target.closest && event.target.closest("select[data-macro-for]");
    if (!picker || !picker.value) return;
    var input = document.getElementById(picker.dataset.macroFor);
    var macro = "{" + picker.value + "}";
    if (picker.dataset.macroMode === "replace") {
      input.value = macro;
    } else {
      var at = input.selectionStart == null ? input.value.length : input.selectionStart;
      input.value = input.value.slice(0, at) + macro + input.value.slice(input.selectionEnd || at);
    }
    picker.value = "";
    input.focus();
    input.dispatchEvent(new Event("input", { bubbles: true }));
  });

  function sendButton(el) {
    var form = el.closest("form");
    return form && form.querySelector("button[type=submit]");
  }

  function recheck(form) {
    var button = sendButton(form);
    if (!button) return;
    var ok = true;
    form.querySelectorAll("textarea[data-json]").forEach(function (area) {
      var box = area.parentNode.querySelector(".json-error");
      try { JSON.parse(area.value); area.classList.remove("invalid"); if (box) box.hidden = true; }
      catch (e) { ok = false; area.classList.add("invalid"); if (box) { box.textContent = "Not valid JSON: " + e.message; box.hidden = false; } }
    });
    form.querySelectorAll("input[data-confirm]").forEach(function (input) {
      if (input.value.trim() !== input.dataset.confirm) ok = false;
    });
    button.disabled = !ok;
  }

  document.addEventListener("input", function (event) {
    var form = event.target.closest && event.target.closest("form.test-send");
    if (form) recheck(form);
  });
})();

// Edit-and-replay and activation: the submit button waits for valid JSON and for the typed confirmation
// (the server checks both again).
(function () {
  "use strict";

  function check(form) {
    var button = form.querySelector("button[type=submit]");
    if (!button) return;
    var ok = true;
    form.querySelectorAll("textarea[data-json]").forEach(function (area) {
      var box = form.querySelector(".json-error");
      try { JSON.parse(area.value); area.classList.remove("invalid"); if (box) box.hidden = true; }
      catch (e) { ok = false; area.classList.add("invalid"); if (box) { box.textContent = "Not valid JSON: " + e.message; box.hidden = false; } }
    });
    form.querySelectorAll("input[data-confirm]").forEach(function (input) {
      if (input.value.trim().replace(/,/g, "") !== input.dataset.confirm.replace(/,/g, "")) ok = false;
    });
    button.disabled = button.hasAttribute("data-blocked") || !ok;
  }

  var FORMS = "form.replay-form, form.activate-form";
  document.addEventListener("input", function (event) {
    var form = event.target.closest && event.target.closest(FORMS);
    if (form) check(form);
  });
  function init(root) {
    if (!root || !root.querySelectorAll) return;
    if (root.matches && root.matches("form.activate-form")) check(root);
    root.querySelectorAll("form.activate-form").forEach(check);
  }
  document.addEventListener("DOMContentLoaded", function () { init(document); });
  document.addEventListener("htmx:load", function (event) { init(event.detail.elt); });
})();
