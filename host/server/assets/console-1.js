// posup console: the page's behaviour, from this file only, so the pages run
// under a Content-Security-Policy that allows no inline script.

// A form with `data-ask` asks before it is sent (deletes).
document.addEventListener('submit', function (event) {
  var ask = event.target.dataset.ask;
  if (ask && !window.confirm(ask)) { event.preventDefault(); event.stopImmediatePropagation(); }
}, true);

// A select marked `data-submit-on-change` sends its form when it changes.
document.addEventListener('change', function (event) {
  if (event.target.matches('[data-submit-on-change]')) { event.target.form.submit(); }
});

// posup console: file uploads with a progress bar. A form marked
// `data-upload="<address>"` sends its file as the request body, with the session's
// CSRF token in a header, to the address plus its fields as the query; the bar
// fills as the bytes go, and the server's words are shown on refusal.
document.addEventListener('submit', function (event) {
  var form = event.target;
  if (!form.dataset.upload) { return; }
  event.preventDefault();
  var input = form.querySelector('input[type=file]');
  var file = input && input.files[0];
  var bar = form.querySelector('progress'), result = form.querySelector('[role=status]');
  if (!file) { return; }
  var query = new URLSearchParams({file_name: file.name});
  form.querySelectorAll('select[name], input[name]:not([type=file])').forEach(function (field) {
    query.set(field.name, field.value);
  });
  var xhr = new XMLHttpRequest();
  xhr.open('POST', form.dataset.upload + '?' + query);
  xhr.setRequestHeader('X-CSRF-Token', form.dataset.csrf);
  xhr.upload.onprogress = function (e) { if (e.lengthComputable) { bar.value = Math.round(100 * e.loaded / e.total); } };
  xhr.onload = function () {
    if (xhr.status === 201) {
      bar.value = 100;
      result.className = 'done';
      result.textContent = form.dataset.done;
      setTimeout(function () { location.reload(); }, 800);
    } else {
      result.className = 'problem';
      result.textContent = form.dataset.failed + ' ' + xhr.responseText;
    }
  };
  xhr.onerror = function () { result.className = 'problem'; result.textContent = form.dataset.failed; };
  bar.hidden = false; bar.value = 0; result.textContent = '';
  xhr.send(file);
});
