// The episode timeline: the slider (or play) shows one kept frame, moves every chart's cursor to
// its env step and marks the plan that was being followed then. No library, no network.
(function () {
  const slider = document.getElementById("scrub");
  if (!slider) return;
  const frames = Array.from(document.querySelectorAll("#frames .frame"));
  const label = document.getElementById("scrub-label");
  const plans = Array.from(document.querySelectorAll(".plan"));
  const play = document.getElementById("play");
  let timer = null;

  function moveCursors(step) {
    document.querySelectorAll("svg.chart[data-left]").forEach(function (svg) {
      const left = Number(svg.dataset.left), width = Number(svg.dataset.width);
      const lo = Number(svg.dataset.xmin), hi = Number(svg.dataset.xmax);
      const x = left + Math.min(Math.max((step - lo) / (hi - lo), 0), 1) * width;
      svg.querySelectorAll("line.cursor").forEach(function (line) {
        line.setAttribute("x1", x); line.setAttribute("x2", x);
      });
    });
  }

  function show(index) {
    frames.forEach(function (frame, i) { frame.classList.toggle("shown", i === index); });
    const step = Number(frames[index].dataset.step);
    let current = -1;
    EMCOT_PLANS.forEach(function (plan, i) { if (plan.start <= step) current = i; });
    plans.forEach(function (plan, i) { plan.classList.toggle("current", i === current); });
    label.textContent = "env step " + step + (current >= 0 ? " · plan " + (current + 1) : "");
    moveCursors(step);
  }

  slider.addEventListener("input", function () { show(Number(slider.value)); });
  play.addEventListener("click", function () {
    if (timer !== null) { clearInterval(timer); timer = null; play.textContent = "▶ play"; return; }
    play.textContent = "❚❚ pause";
    timer = setInterval(function () {
      const next = (Number(slider.value) + 1) % frames.length;
      slider.value = next; show(next);
      if (next === frames.length - 1) { clearInterval(timer); timer = null; play.textContent = "▶ play"; }
    }, 150);
  });
  show(0);
})();
