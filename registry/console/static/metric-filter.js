/* The experiment form's guardrail list, filtered as one types.
 *
 * Without this script the list is filtered by the server: the Filter button sends the form back to itself
 * (nothing is saved) and the page comes back with the metrics that match, every typed value kept. With it,
 * each keystroke hides the metrics whose key lacks a word typed (a ticked one always shows), the count of
 * those shown is said in the polite status under the field, Enter in the field filters instead of saving,
 * and the Filter button, having nothing left to do, is hidden.
 */
(function () {
  "use strict";
  var box = document.querySelector("[data-guardrail-filter]");
  if (!box) {
    return;
  }
  var input = box.querySelector("input");
  var button = box.querySelector("[data-guardrail-filter-button]");
  var shown = document.querySelector("[data-guardrail-shown]");
  var count = document.querySelector("[data-guardrail-count]");
  var rows = Array.prototype.slice.call(document.querySelectorAll("#guardrail-list .check"));
  var lastSaid = null;

  function matches(key, words) {
    for (var i = 0; i < words.length; i += 1) {
      if (key.indexOf(words[i]) === -1) {
        return false;
      }
    }
    return true;
  }

  function apply() {
    var words = input.value.toLowerCase().split(/\s+/).filter(Boolean);
    var visible = 0;
    var ticked = 0;
    rows.forEach(function (row) {
      var box = row.querySelector("input");
      var show = box.checked || matches(box.value.toLowerCase(), words);
      row.hidden = !show;
      visible += show ? 1 : 0;
      ticked += box.checked ? 1 : 0;
    });
    var said = words.length
      ? visible + " of " + rows.length + " metrics shown; chosen ones always show."
      : rows.length + " metrics" + (rows.length > 8 ? ": filter to find one." : ".");
    if (said !== lastSaid) {
      shown.textContent = said;
      lastSaid = said;
    }
    count.textContent = ticked + " chosen";
  }

  input.addEventListener("input", apply);
  input.addEventListener("keydown", function (event) {
    if (event.key === "Enter") {
      event.preventDefault();
      apply();
    }
  });
  document.getElementById("guardrail-list").addEventListener("change", function () {
    count.textContent = rows.filter(function (row) { return row.querySelector("input").checked; }).length + " chosen";
  });
  button.hidden = true;
  lastSaid = shown.textContent;
  apply();
})();
