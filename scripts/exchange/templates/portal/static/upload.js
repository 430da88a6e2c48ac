// Upload progress: the same form, posted by XMLHttpRequest to show a progress bar.
// Without JavaScript the form posts as usual; the server answers both the same way.
"use strict";
(function () {
  var form = document.getElementById("upload-form");
  var bar = document.getElementById("upload-progress");
  if (!form || !bar || !window.FormData) { return; }
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var request = new XMLHttpRequest();
    request.open("POST", form.action);
    request.upload.addEventListener("progress", function (progress) {
      if (progress.lengthComputable) { bar.value = Math.round(100 * progress.loaded / progress.total); }
    });
    request.addEventListener("load", function () { window.location.assign(request.responseURL || "/files"); });
    request.addEventListener("error", function () { window.location.assign("/files?error=bad_upload"); });
    bar.hidden = false;
    bar.setAttribute("aria-label", bar.dataset.busy);
    form.querySelector("button").disabled = true;
    request.send(new FormData(form));
  });
})();
