/* The stack viewer of a study package's series pages (IHE_PDI/VIEWER.JS) and of the portal's view
   page. One classic script on purpose: browsers refuse modules, fetch and workers from file://.
   Without it the page is a column of images; with it each <div class="stack"> shows one picture
   at a time: paging by wheel, keys, slider and buttons, zoom by buttons, +/- or pinch, pan by
   dragging. Texts come from the page (data-* attributes), so the script holds no language. */
(function () {
  "use strict";

  function button(text, label, onclick) {
    var b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    b.setAttribute("aria-label", label);
    b.title = label;
    b.addEventListener("click", onclick);
    return b;
  }

  function Stack(root) {
    var figures = Array.prototype.slice.call(root.querySelectorAll("figure"));
    if (figures.length === 0) return;
    var texts = root.dataset;
    var current = 0, zoom = 1, panX = 0, panY = 0;
    var view = document.createElement("div");
    view.className = "stack-view";
    view.tabIndex = 0;
    view.setAttribute("role", "img");
    var img = document.createElement("img");
    img.className = "stack-image";
    img.alt = "";
    img.draggable = false;
    view.appendChild(img);

    var slider = document.createElement("input");
    slider.type = "range";
    slider.min = "1";
    slider.max = String(figures.length);
    slider.value = "1";
    slider.setAttribute("aria-label", texts.picture || "Image");
    var counter = document.createElement("output");
    counter.className = "stack-counter";

    var controls = document.createElement("div");
    controls.className = "stack-controls";
    controls.appendChild(button("\u25B2", texts.previous || "Previous", function () { show(current - 1); }));
    controls.appendChild(slider);
    controls.appendChild(button("\u25BC", texts.next || "Next", function () { show(current + 1); }));
    controls.appendChild(counter);
    controls.appendChild(button("\u2212", texts.zoomOut || "Zoom out", function () { setZoom(zoom / 1.25); }));
    controls.appendChild(button("+", texts.zoomIn || "Zoom in", function () { setZoom(zoom * 1.25); }));
    controls.appendChild(button("1:1", texts.zoomReset || "Fit", function () { setZoom(1); }));

    var hint = document.createElement("p");
    hint.className = "stack-hint";
    hint.textContent = texts.hint || "";

    function preload(index) {
      if (index < 0 || index >= figures.length) return;
      var source = figures[index].querySelector("img");
      if (source && !source.dataset.loaded) {
        source.dataset.loaded = "1";
        new Image().src = source.currentSrc || source.src;
      }
    }

    function place() {
      img.style.transform = "translate(" + panX + "px," + panY + "px) scale(" + zoom + ")";
    }

    function setZoom(value) {
      zoom = Math.min(8, Math.max(1, value));
      if (zoom === 1) { panX = 0; panY = 0; }
      place();
    }

    function show(index) {
      current = Math.min(figures.length - 1, Math.max(0, index));
      var source = figures[current].querySelector("img");
      img.src = source.currentSrc || source.src;
      img.width = source.width;
      img.height = source.height;
      var label = (current + 1) + " / " + figures.length;
      img.alt = source.alt;
      view.setAttribute("aria-label", source.alt);
      counter.textContent = label;
      slider.value = String(current + 1);
      root.dataset.current = String(current + 1);
      for (var k = 1; k <= 3; k++) { preload(current + k); preload(current - k); }
    }

    slider.addEventListener("input", function () { show(parseInt(slider.value, 10) - 1); });
    view.addEventListener("wheel", function (event) {
      event.preventDefault();
      if (event.ctrlKey) { setZoom(zoom * (event.deltaY < 0 ? 1.1 : 1 / 1.1)); return; }
      show(current + (event.deltaY > 0 ? 1 : -1));
    }, { passive: false });
    view.addEventListener("keydown", function (event) {
      var keys = {
        ArrowUp: -1, ArrowLeft: -1, PageUp: -10, ArrowDown: 1, ArrowRight: 1, PageDown: 10
      };
      if (event.key in keys) show(current + keys[event.key]);
      else if (event.key === "Home") show(0);
      else if (event.key === "End") show(figures.length - 1);
      else if (event.key === "+" || event.key === "=") setZoom(zoom * 1.25);
      else if (event.key === "-") setZoom(zoom / 1.25);
      else if (event.key === "0") setZoom(1);
      else return;
      event.preventDefault();
    });

    // Dragging: pans when zoomed in, pages through the stack otherwise (a finger on a phone).
    var pointers = {}, start = null;
    view.addEventListener("pointerdown", function (event) {
      view.setPointerCapture(event.pointerId);
      pointers[event.pointerId] = { x: event.clientX, y: event.clientY };
      var ids = Object.keys(pointers);
      start = { x: event.clientX, y: event.clientY, panX: panX, panY: panY, index: current, zoom: zoom,
                spread: ids.length === 2 ? spread() : 0 };
    });
    function spread() {
      var ids = Object.keys(pointers), a = pointers[ids[0]], b = pointers[ids[1]];
      return Math.hypot(a.x - b.x, a.y - b.y);
    }
    view.addEventListener("pointermove", function (event) {
      if (!start || !(event.pointerId in pointers)) return;
      pointers[event.pointerId] = { x: event.clientX, y: event.clientY };
      if (Object.keys(pointers).length === 2 && start.spread) { setZoom(start.zoom * spread() / start.spread); return; }
      var dx = event.clientX - start.x, dy = event.clientY - start.y;
      if (zoom > 1) { panX = start.panX + dx; panY = start.panY + dy; place(); return; }
      var step = Math.max(4, view.clientHeight / Math.max(20, figures.length));
      show(start.index + Math.round(dy / step));
    });
    function release(event) { delete pointers[event.pointerId]; if (!Object.keys(pointers).length) start = null; }
    view.addEventListener("pointerup", release);
    view.addEventListener("pointercancel", release);

    root.classList.add("stack-on");
    root.insertBefore(hint, root.firstChild);
    root.insertBefore(controls, root.firstChild);
    root.insertBefore(view, root.firstChild);
    show(0);
  }

  function start() {
    var stacks = document.querySelectorAll("div.stack");
    for (var i = 0; i < stacks.length; i++) Stack(stacks[i]);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
