/* Live pages: while the page holds an element with data-mqi-live, its #content is fetched
   again every data-mqi-live seconds and swapped in place.  The reader keeps their place:
   the scroll position, which <details> are open, and (while text is selected) the page
   is left alone.  It stops once the new content has no data-mqi-live (the case ended). */
(function () {
  "use strict";

  function liveSeconds(root) {
    var marker = root.querySelector("[data-mqi-live]");
    return marker ? Number(marker.getAttribute("data-mqi-live")) || 5 : 0;
  }

  function openDetails(root) {
    return Array.prototype.map.call(root.querySelectorAll("details[data-mqi-key]"), function (d) {
      return [d.getAttribute("data-mqi-key"), d.open];
    });
  }

  function restoreDetails(root, states) {
    states.forEach(function (pair) {
      var found = root.querySelector('details[data-mqi-key="' + CSS.escape(pair[0]) + '"]');
      if (found) { found.open = pair[1]; }
    });
  }

  function schedule(seconds) {
    if (seconds > 0) { window.setTimeout(refresh, seconds * 1000); }
  }

  function refresh() {
    var content = document.getElementById("content");
    var selection = window.getSelection();
    if (selection && !selection.isCollapsed) { schedule(liveSeconds(content)); return; }
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-MQI-Live": "1" } })
      .then(function (response) { return response.ok ? response.text() : Promise.reject(response.status); })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("content");
        if (!fresh) { return; }
        var x = window.scrollX, y = window.scrollY, states = openDetails(content);
        content.innerHTML = fresh.innerHTML;
        restoreDetails(content, states);
        window.scrollTo(x, y);
        document.dispatchEvent(new CustomEvent("mqi:refreshed"));
        schedule(liveSeconds(content));
      })
      .catch(function () { schedule(liveSeconds(content) * 2); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    schedule(liveSeconds(document.getElementById("content") || document));
  });
})();
