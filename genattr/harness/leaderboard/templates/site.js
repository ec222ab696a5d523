// Sortable tables: click (or Enter on) a column header; numbers sort by their data-sort value, missing values last.
(function () {
  "use strict";
  function key(cell) {
    var raw = cell ? cell.getAttribute("data-sort") : null;
    if (raw === null && cell) raw = cell.textContent.trim();
    if (raw === null || raw === "" || raw === "–") return null;
    var f = Number(raw);
    return isFinite(f) ? f : raw.toLowerCase();
  }
  function sortBy(table, th) {
    var col = Number(th.getAttribute("data-col"));
    var current = th.getAttribute("aria-sort");
    var first = th.getAttribute("data-first") === "asc" ? "ascending" : "descending";
    var dir = current ? (current === "ascending" ? "descending" : "ascending") : first;
    table.querySelectorAll("thead th[aria-sort]").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir);
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.forEach(function (r, i) { r._i = i; });
    rows.sort(function (a, b) {
      var x = key(a.cells[col]), y = key(b.cells[col]);
      if (x === null || y === null) return (x === null) - (y === null) || a._i - b._i;
      var c = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y));
      return (dir === "ascending" ? c : -c) || a._i - b._i;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("thead th[data-col]").forEach(function (th) {
      th.tabIndex = 0;
      th.addEventListener("click", function () { sortBy(table, th); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(table, th); }
      });
    });
  });
})();
