/* Live refresh for a console page of something still moving: a running evaluation run, a running rollout, the results
 * of a running experiment.
 *
 * The page opts in with one element: data-live-url (where its parts are served as HTML, same query as the
 * page), data-live-interval (milliseconds between polls) and data-live-state. Every element of the page
 * with data-live-part and an id is a part; each poll fetches the parts and swaps in the ones that changed,
 * keeping the element itself (so a polite live region stays the same region), and the focus and open
 * <details> inside it when their ids come back, and the choice in a control the reader changed but did not send
 * (a <select> of phases) when the same choice is still offered. The answer's data-live-state="ended" stops the polls.
 * The query parameters named in data-live-once (a notice after an action) belong to the page load alone: they are
 * taken out of the address at once, so that neither the polls nor a reload carry them and the notice shows once.
 *
 * One poll at a time: the next is timed only once the last has answered. An error (a network failure,
 * 429, 5xx, no answer within a while) doubles the wait up to a ceiling; an answer that is not the parts
 * (signed out, forbidden, gone) stops the polls and the page says to reload. While the tab is hidden
 * nothing is fetched. Without this script the page says to reload it, and works as before.
 */
(function () {
  "use strict";
  var root = document.querySelector("[data-live-url]");
  if (!root || !window.fetch || !window.DOMParser || !window.AbortController) {
    return;
  }
  var url = root.getAttribute("data-live-url");
  var every = Number(root.getAttribute("data-live-interval")) || 2000;
  var CEILING = 60000;
  var PATIENCE = 20000;
  var wait = every;
  var timer = null;
  var busy = false;
  var missed = false;
  var done = false;
  var answered = 0;
  var seen = {};

  function parts(within) {
    return Array.prototype.slice.call(within.querySelectorAll("[data-live-part][id]"));
  }

  function state(value) {
    root.setAttribute("data-live-state", value);
  }

  /* Out of the address, without a new history entry: the parameters the page names in data-live-once. */
  function forget(names) {
    if (!names || !window.URLSearchParams || !window.history.replaceState) {
      return;
    }
    var query = new URLSearchParams(window.location.search);
    var gone = names.split(/\s+/).filter(function (name) {
      return name && query.has(name);
    });
    if (gone.length) {
      gone.forEach(function (name) {
        query.delete(name);
      });
      var rest = query.toString();
      var address = window.location.pathname + (rest ? "?" + rest : "") + window.location.hash;
      window.history.replaceState(window.history.state, "", address);
    }
  }

  /* A text field or <select> whose value the reader changed since the page (or the last swap) drew it. */
  function edited(control) {
    if (control.tagName === "SELECT") {
      return Array.prototype.some.call(control.options, function (o) {
        return o.selected !== o.defaultSelected;
      });
    }
    return control.type !== "checkbox" && control.type !== "radio" && control.value !== control.defaultValue;
  }

  /* Whether the control can take the value again: a <select> only when the choice is still among its options. */
  function offers(control, value) {
    return (
      control.tagName !== "SELECT" ||
      Array.prototype.some.call(control.options, function (o) {
        return o.value === value;
      })
    );
  }

  function swap(old, fresh) {
    var active = document.activeElement;
    var within = Boolean(active && active !== document.body && old.contains(active));
    var focused = within ? active.id : "";
    var open = [];
    Array.prototype.forEach.call(old.querySelectorAll("details[open][id]"), function (d) {
      open.push(d.id);
    });
    var values = [];
    Array.prototype.forEach.call(old.querySelectorAll("select[id], input[id], textarea[id]"), function (c) {
      if (edited(c)) {
        values.push([c.id, c.value]);
      }
    });
    Array.prototype.slice.call(old.attributes).forEach(function (a) {
      if (!fresh.hasAttribute(a.name)) {
        old.removeAttribute(a.name);
      }
    });
    Array.prototype.forEach.call(fresh.attributes, function (a) {
      if (old.getAttribute(a.name) !== a.value) {
        old.setAttribute(a.name, a.value);
      }
    });
    var nodes = Array.prototype.map.call(fresh.childNodes, function (n) {
      return document.importNode(n, true);
    });
    old.replaceChildren.apply(old, nodes);
    open.forEach(function (id) {
      var d = document.getElementById(id);
      if (d && old.contains(d)) {
        d.open = true;
      }
    });
    values.forEach(function (kept) {
      var c = document.getElementById(kept[0]);
      if (c && old.contains(c) && offers(c, kept[1])) {
        c.value = kept[1];
      }
    });
    if (within) {
      /* The same control again, or (it is gone, as Cancel once the run ends) the part, so the keyboard
       * goes on from the same place rather than from the top of the page. */
      var again = focused ? document.getElementById(focused) : null;
      if (!again || !old.contains(again)) {
        again = old;
      }
      if (again === old) {
        old.setAttribute("tabindex", "-1");
      }
      again.focus({ preventScroll: true });
    }
  }

  /* Swap in the parts that changed; false when the answer is not the parts. */
  function apply(text) {
    var answer = new DOMParser().parseFromString(text, "text/html");
    var marker = answer.querySelector("[data-live-state]");
    if (!marker) {
      return false;
    }
    parts(answer).forEach(function (fresh) {
      var old = document.getElementById(fresh.id);
      if (old && old.hasAttribute("data-live-part") && seen[fresh.id] !== fresh.outerHTML) {
        swap(old, fresh);
        seen[fresh.id] = fresh.outerHTML;
      }
    });
    if (marker.getAttribute("data-live-state") === "ended") {
      done = true;
      state("ended");
    }
    return true;
  }

  function halt() {
    done = true;
    state("stopped");
  }

  /* The next poll. The root says whether a poll is out (data-live-busy), how many have settled and the wait
   * before the next (none once done): what a reader's tools, and the tests, can see of the refresh. */
  function later(ms) {
    root.setAttribute("data-live-polls", String(answered));
    if (done) {
      root.removeAttribute("data-live-wait");
    } else {
      root.setAttribute("data-live-wait", String(ms));
      timer = window.setTimeout(poll, ms);
    }
  }

  function poll() {
    timer = null;
    if (done || busy) {
      return;
    }
    if (document.hidden) {
      missed = true;
      return;
    }
    busy = true;
    root.setAttribute("data-live-busy", "");
    var controller = new AbortController();
    var patience = window.setTimeout(function () {
      controller.abort();
    }, PATIENCE);
    fetch(url + window.location.search, {
      headers: { Accept: "text/html" },
      credentials: "same-origin",
      cache: "no-store",
      redirect: "manual",
      signal: controller.signal
    })
      .then(function (response) {
        if (response.ok) {
          return response.text().then(function (text) {
            if (apply(text)) {
              wait = every;
            } else {
              halt();
            }
          });
        }
        if (response.status === 429 || response.status >= 500) {
          wait = Math.min(wait * 2, CEILING);
        } else {
          halt();
        }
      })
      .catch(function () {
        wait = Math.min(wait * 2, CEILING);
      })
      .then(function () {
        window.clearTimeout(patience);
        busy = false;
        root.removeAttribute("data-live-busy");
        answered += 1;
        later(wait);
      });
  }

  forget(root.getAttribute("data-live-once"));
  parts(document).forEach(function (part) {
    seen[part.id] = part.outerHTML;
  });
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && missed && !busy && !done) {
      missed = false;
      if (timer !== null) {
        window.clearTimeout(timer);
      }
      poll();
    }
  });
  state("on");
  later(every);
})();
