// Live board: one EventSource; the server sends a full "snapshot" on every (re)connect and
// then one server-rendered <li> per changed bed. No build step, no framework.
(function () {
  const list = document.getElementById("beds");
  const live = document.getElementById("live");
  const ward = list.dataset.ward;
  function setLive(on, text) {
    live.classList.toggle("on", on); live.classList.toggle("off", !on);
    live.textContent = text || (on ? "live" : "reconnecting…");
  }
  function dur(iso) {
    const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    if (s < 60) return Math.floor(s) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }
  function tick() {  // ageing: text and border, every 10 s
    for (const t of list.querySelectorAll("time.ago")) t.textContent = dur(t.getAttribute("datetime")) + " ago";
    for (const t of list.querySelectorAll("time.dur")) t.textContent = dur(t.getAttribute("datetime"));
    for (const li of list.querySelectorAll("li.unacked")) {
      const min = (Date.now() - Date.parse(li.dataset.waiting)) / 60000;
      li.classList.toggle("age-2", min >= 5 && min < 15);
      li.classList.toggle("age-3", min >= 15);
    }
  }
  function sort() {
    const items = Array.from(list.children);
    items.sort((a, b) => (a.dataset.sort < b.dataset.sort ? -1 : a.dataset.sort > b.dataset.sort ? 1 : 0));
    for (const li of items) list.appendChild(li);
  }
  function connect() {
    const es = new EventSource("/events" + (ward ? "?ward=" + encodeURIComponent(ward) : ""));
    es.addEventListener("snapshot", (e) => {
      const d = JSON.parse(e.data);
      list.innerHTML = d.html; tick();
      setLive(true, d.caught_up ? "live" : "live (reading history…)");
    });
    es.addEventListener("bed", (e) => {
      const d = JSON.parse(e.data);
      const tpl = document.createElement("template");
      tpl.innerHTML = d.html.trim();
      const li = tpl.content.firstElementChild;
      const old = document.getElementById(d.id);
      if (old) old.replaceWith(li); else list.appendChild(li);
      sort(); tick();
    });
    es.addEventListener("gone", (e) => {  // discharged
      const old = document.getElementById(JSON.parse(e.data).id);
      if (old) old.remove();
    });
    es.onerror = () => {
      if (es.readyState === EventSource.CLOSED) {  // e.g. 401 after the session expired: no retry
        setLive(false, "disconnected: reloading…");
        setTimeout(() => location.reload(), 3000);
      } else setLive(false);
    };
  }
  tick(); setInterval(tick, 10000); connect();
})();
